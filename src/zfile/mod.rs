//! ZFile: random-access compressed files (LZ4 / ZSTD blocks, jump table, per-block CRC32C).
