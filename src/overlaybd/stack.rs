//! A stack of sealed layers merged into one sorted extent map (spec `lsmt.md` §9), and the
//! read path shared with images: a read becomes per-layer reads issued concurrently.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt, TryStreamExt};

use super::error::{LsmtError, LsmtResult};
use super::header::LayerUuid;
use super::index::{clip, first_ending_after, lookup, Record, SECTOR};
use super::layer::{read, SealedLayer};
use crate::source::LayerSource;

/// Most read-only layers one stack accepts.
pub const MAX_LAYERS: usize = 255;
/// Layer reads one request may have in flight at once.
const MAX_CONCURRENT_READS: usize = 32;
/// Zeros shared by reads that find no data (holes are common: a filesystem image maps only
/// its used blocks) and by image discards that write zeros. In `.bss`, so it costs no file
/// size and only the pages a read touches.
pub(crate) static ZEROS: [u8; 1 << 20] = [0; 1 << 20];
/// The reference's limit on records in a merged index.
pub const MAX_MERGED_RECORDS: usize = 128_000_000;

/// One index taking part in a merge: its sorted records and the tag its records get.
#[derive(Debug, Clone, Copy)]
pub struct MergeInput<'a> {
    /// Sorted, disjoint records of one layer.
    pub records: &'a [Record],
    /// Tag stamped on every record taken from this layer.
    pub tag: u8,
}

/// Merges indexes given **top first** into one sorted, disjoint array (§9.3): for every sector
/// the topmost covering record wins; zeroed records mask lower ones; uncovered sectors stay holes.
/// Records are clipped but never coalesced.
pub fn merge_indexes(inputs: &[MergeInput<'_>]) -> Vec<Record> {
    let mut out = Vec::new();
    merge_level(inputs, 0, 0, u64::MAX, &mut out);
    out
}

/// Fills `[begin, end)` from layers `level..`; recursion depth is bounded by the layer count.
fn merge_level(
    inputs: &[MergeInput<'_>],
    level: usize,
    begin: u64,
    end: u64,
    out: &mut Vec<Record>,
) {
    let Some(input) = inputs.get(level) else {
        return;
    };
    if begin >= end {
        return;
    }
    let start = out.len();
    let mut cur = begin;
    let from = first_ending_after(input.records, begin);
    for r in input.records.get(from..).unwrap_or(&[]) {
        if r.offset >= end {
            break;
        }
        if r.offset > cur {
            merge_level(inputs, level + 1, cur, r.offset, out);
        }
        out.push(r.with_tag(input.tag));
        cur = r.end();
    }
    if cur < end {
        merge_level(inputs, level + 1, cur, end, out);
    }
    if let Some(produced) = out.get_mut(start..) {
        clip(produced, begin, end);
    }
}

/// Where a chain of layers breaks: the first layer (bottom first; `None` for a layer whose
/// header is not known, which restarts the chain) whose parent UUID is not the UUID of the
/// known layer right below it, described for a log line or a report. The reference reader
/// does not check the chain (`lsmt.md` §3.3), so a break is a warning: the layers may come
/// from different images, and blocks one of them never wrote read as another image's data.
pub fn uuid_chain_break(bottom_first: &[Option<(LayerUuid, LayerUuid)>]) -> Option<String> {
    bottom_first.windows(2).enumerate().find_map(|(i, pair)| {
        let (Some((below, _)), Some((_, parent))) = (pair[0], pair[1]) else {
            return None;
        };
        (parent != below).then(|| {
            format!(
                "broken at lowers[{}]: parent {parent} is not the uuid {below} of lowers[{i}]",
                i + 1
            )
        })
    })
}

/// Read-only layers merged into one extent map. A record's tag is the position of its layer in
/// the top-first list (0 = topmost), as in the reference.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<SealedLayer>,
    merged: Vec<Record>,
    virtual_size: u64,
}

impl LayerStack {
    /// Builds the stack from layers given **bottom first** (the order of `lowers` in
    /// `config.v1.json`).
    pub fn new(bottom_first: Vec<SealedLayer>) -> LsmtResult<Self> {
        if bottom_first.len() > MAX_LAYERS {
            return Err(LsmtError::Invalid(format!(
                "{} read-only layers, at most {MAX_LAYERS} can be stacked",
                bottom_first.len()
            )));
        }
        let mut layers = bottom_first;
        layers.reverse();
        let total: usize = layers.iter().map(|l| l.records().len()).sum();
        if total > MAX_MERGED_RECORDS {
            return Err(LsmtError::Invalid(format!(
                "the layers hold {total} index records, more than the {MAX_MERGED_RECORDS} a merged index may hold"
            )));
        }
        let inputs: Vec<MergeInput<'_>> = layers
            .iter()
            .enumerate()
            // At most 255 layers, so the position fits a u8.
            .map(|(i, l)| MergeInput {
                records: l.records(),
                tag: i as u8,
            })
            .collect();
        let merged = merge_indexes(&inputs);
        let virtual_size = layers
            .iter()
            .map(|l| l.virtual_size())
            .find(|&v| v != 0)
            .unwrap_or(0);
        Ok(LayerStack {
            layers,
            merged,
            virtual_size,
        })
    }

    /// Where the layers' UUID chain breaks (see [`uuid_chain_break`]); `None` when each
    /// layer names the one below it as its parent.
    pub fn uuid_chain_break(&self) -> Option<String> {
        let chain: Vec<_> = self
            .layers
            .iter()
            .rev()
            .map(|l| Some((l.layout().header.uuid, l.layout().header.parent_uuid)))
            .collect();
        uuid_chain_break(&chain)
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True for a stack without layers (everything reads as zeros).
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Virtual size: that of the topmost layer with a non-zero size.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// The merged extent map, sorted and disjoint, tags = top-first layer positions.
    pub fn merged(&self) -> &[Record] {
        &self.merged
    }

    /// The layer a merged record's tag names.
    pub fn layer(&self, tag: u8) -> Option<&SealedLayer> {
        self.layers.get(usize::from(tag))
    }

    /// The layers, topmost first (position = tag).
    pub fn layers_top_first(&self) -> &[SealedLayer] {
        &self.layers
    }

    /// Merged records intersecting `[start, start + sectors)`, clipped (§9.5).
    pub fn lookup(&self, start: u64, sectors: u64) -> Vec<Record> {
        lookup(&self.merged, start, sectors)
    }

    /// The source a merged record's tag reads data from.
    pub fn source(&self, tag: u8) -> Option<Arc<dyn LayerSource>> {
        self.layer(tag).map(|l| Arc::clone(l.source()))
    }

    /// Reads `len` bytes of the virtual disk at byte `offset` (both multiples of 512).
    pub async fn read(&self, offset: u64, len: usize) -> LsmtResult<Bytes> {
        read_virtual(
            offset,
            len,
            |s, n| self.lookup(s, n),
            |tag| self.source(tag),
        )
        .await
    }
}

/// Converts a byte range into sectors, refusing misaligned requests.
pub(crate) fn sector_range(offset: u64, len: usize) -> LsmtResult<(u64, u64)> {
    let len = len as u64;
    if offset % SECTOR != 0 || len % SECTOR != 0 {
        return Err(LsmtError::Invalid(format!(
            "offset {offset} / length {len} are not multiples of 512"
        )));
    }
    Ok((offset / SECTOR, len / SECTOR))
}

/// Reads `len` bytes of a virtual disk at byte `offset` (both multiples of 512): `lookup`
/// gives the clipped, sorted extents of a sector range and `resolve` the source of an
/// extent's tag. The one read helper of stacks, images and writable layers; each differs
/// only in its extent map and its sources.
pub(crate) async fn read_virtual(
    offset: u64,
    len: usize,
    lookup: impl FnOnce(u64, u64) -> Vec<Record>,
    resolve: impl Fn(u8) -> Option<Arc<dyn LayerSource>>,
) -> LsmtResult<Bytes> {
    let (start, sectors) = sector_range(offset, len)?;
    let extents = lookup(start, sectors);
    read_extents(start, sectors, &extents, resolve).await
}

/// Assembles `[start, start + sectors)` from clipped, sorted records: data records read from the
/// source their tag resolves to (all concurrently), zeroed records and holes yield zeros.
async fn read_extents(
    start: u64,
    sectors: u64,
    records: &[Record],
    resolve: impl Fn(u8) -> Option<Arc<dyn LayerSource>>,
) -> LsmtResult<Bytes> {
    let total = usize::try_from(sectors * SECTOR)
        .map_err(|_| LsmtError::Invalid(format!("read of {sectors} sectors is too large")))?;
    let mut reads = Vec::new();
    for run in data_runs(records) {
        let source = resolve(run.tag).ok_or_else(|| {
            LsmtError::corrupt(
                "layer stack",
                format!(
                    "extent at sector {} names unknown layer {}",
                    run.offset, run.tag
                ),
            )
        })?;
        // Positions relative to the request fit in `total`, which fits usize.
        let at = ((run.offset - start) * SECTOR) as usize;
        let len = (run.sectors * SECTOR) as usize;
        reads.push(async move {
            let b = read(&*source, run.moffset * SECTOR, len).await?;
            Ok::<_, LsmtError>((at, b))
        });
    }
    if reads.is_empty() {
        if let Some(zeros) = ZEROS.get(..total) {
            // Holes and zeroed extents only: share static zeros, no allocation or fill.
            return Ok(Bytes::from_static(zeros));
        }
    }
    let pieces: Vec<(usize, Bytes)> = if reads.len() == 1 {
        // The common case (committed layers store data in logical order, so runs coalesce):
        // await the one read directly, without the concurrent-stream machinery.
        match reads.pop() {
            Some(only) => vec![only.await?],
            None => Vec::new(),
        }
    } else {
        stream::iter(reads)
            .buffer_unordered(MAX_CONCURRENT_READS)
            .try_collect()
            .await?
    };
    // One data extent covering the whole request: hand its bytes over without a copy.
    if let [(0, b)] = pieces.as_slice() {
        if b.len() == total {
            return Ok(b.clone());
        }
    }
    assemble(total, pieces)
}

/// Lays `pieces` (disjoint `(position, bytes)` within `total`) end to end, zeros between them:
/// each byte is written once, with no zero-fill of what the pieces then overwrite.
fn assemble(total: usize, mut pieces: Vec<(usize, Bytes)>) -> LsmtResult<Bytes> {
    pieces.sort_unstable_by_key(|&(at, _)| at);
    let mut buf = BytesMut::with_capacity(total);
    for (at, b) in pieces {
        // Records are clipped to the request and disjoint, and reads return exactly their
        // length; anything else is refused rather than misplaced.
        let end = at.checked_add(b.len()).filter(|&e| e <= total);
        if at < buf.len() || end.is_none() {
            return Err(LsmtError::Invalid(format!(
                "extent at byte {at} (+{}) overlaps another or lies outside a read of {total}",
                b.len()
            )));
        }
        buf.resize(at, 0);
        buf.extend_from_slice(&b);
    }
    buf.resize(total, 0);
    Ok(buf.freeze())
}

/// A run of data sectors read with one request: consecutive in the virtual disk and in one
/// layer file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DataRun {
    offset: u64,
    sectors: u64,
    moffset: u64,
    tag: u8,
}

/// Joins data records that continue each other both logically and in the same file (common in
/// committed blobs, whose data is stored in logical order), so a read issues fewer requests.
fn data_runs(records: &[Record]) -> Vec<DataRun> {
    let mut runs: Vec<DataRun> = Vec::new();
    for r in records.iter().filter(|r| !r.zeroed) {
        let len = u64::from(r.length);
        match runs.last_mut() {
            Some(p)
                if p.tag == r.tag
                    && p.offset + p.sectors == r.offset
                    && p.moffset + p.sectors == r.moffset =>
            {
                p.sectors += len;
            }
            _ => runs.push(DataRun {
                offset: r.offset,
                sectors: len,
                moffset: r.moffset,
                tag: r.tag,
            }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(r: Record, tag: u8) -> Record {
        r.with_tag(tag)
    }

    #[test]
    fn worked_example_9_4() {
        let l0 = [Record::data(0, 100, 8)];
        let l1 = [Record::data(20, 10, 8), Record::zeroed(50, 30, 18)];
        let l2 = [Record::data(25, 30, 8)];
        let merged = merge_indexes(&[
            MergeInput {
                records: &l2,
                tag: 0,
            },
            MergeInput {
                records: &l1,
                tag: 1,
            },
            MergeInput {
                records: &l0,
                tag: 2,
            },
        ]);
        let expect = vec![
            t(Record::data(0, 20, 8), 2),
            t(Record::data(20, 5, 8), 1),
            t(Record::data(25, 30, 8), 0),
            t(Record::zeroed(55, 25, 18), 1),
            t(Record::data(80, 20, 88), 2),
        ];
        assert_eq!(merged, expect);
        // §9.5 lookup example.
        assert_eq!(
            lookup(&merged, 22, 40),
            vec![
                t(Record::data(22, 3, 10), 1),
                t(Record::data(25, 30, 8), 0),
                t(Record::zeroed(55, 7, 18), 1)
            ]
        );
        assert_eq!(lookup(&merged, 100, 50), vec![]);
    }

    #[test]
    fn merge_of_section_11_example_keeps_tags() {
        let a = [Record::data(0, 8, 8)];
        let b = [Record::data(4, 8, 8)];
        let merged = merge_indexes(&[
            MergeInput {
                records: &b,
                tag: 0,
            },
            MergeInput {
                records: &a,
                tag: 1,
            },
        ]);
        assert_eq!(
            merged,
            vec![t(Record::data(0, 4, 8), 1), t(Record::data(4, 8, 8), 0)]
        );
    }

    #[test]
    fn holes_between_layers_stay_holes() {
        let low = [Record::data(10, 5, 8), Record::data(40, 5, 13)];
        let top = [Record::zeroed(20, 5, 8)];
        let merged = merge_indexes(&[
            MergeInput {
                records: &top,
                tag: 0,
            },
            MergeInput {
                records: &low,
                tag: 1,
            },
        ]);
        assert_eq!(
            merged,
            vec![
                t(Record::data(10, 5, 8), 1),
                t(Record::zeroed(20, 5, 8), 0),
                t(Record::data(40, 5, 13), 1)
            ]
        );
    }

    /// Sorted, disjoint records over sectors 0..200 for one layer.
    fn layer_records() -> impl proptest::strategy::Strategy<Value = Vec<Record>> {
        use proptest::prelude::*;
        prop::collection::vec((0u64..12, 1u32..20, any::<bool>()), 0..10).prop_map(|parts| {
            let mut out = Vec::new();
            let mut cur = 0u64;
            for (gap, len, zeroed) in parts {
                let offset = cur + gap;
                let moffset = 8 + offset * 3;
                out.push(if zeroed {
                    Record::zeroed(offset, len, moffset)
                } else {
                    Record::data(offset, len, moffset)
                });
                cur = offset + u64::from(len);
            }
            out
        })
    }

    /// What a sector shows: the topmost covering record's (tag, zeroed, data sector).
    fn visible(layers: &[Vec<Record>], sector: u64) -> Option<(u8, bool, u64)> {
        layers.iter().enumerate().find_map(|(level, recs)| {
            recs.iter()
                .find(|r| r.offset <= sector && sector < r.end())
                .map(|r| {
                    let m = if r.zeroed {
                        r.moffset
                    } else {
                        r.moffset + sector - r.offset
                    };
                    (level as u8, r.zeroed, m)
                })
        })
    }

    proptest::proptest! {
        /// The merged map agrees sector by sector with "topmost covering record wins", is
        /// sorted and disjoint, and lookups of any range agree with it too.
        #[test]
        fn merge_matches_per_sector_semantics(
            layers in proptest::collection::vec(layer_records(), 1..5),
            start in 0u64..250,
            len in 0u64..100,
        ) {
            let inputs: Vec<_> =
                layers.iter().enumerate().map(|(i, r)| MergeInput { records: r, tag: i as u8 }).collect();
            let merged = merge_indexes(&inputs);
            assert_eq!(crate::overlaybd::index::check_sorted_disjoint(&merged), Ok(()));
            assert!(merged.iter().all(|r| r.length > 0));
            for sector in 0..300 {
                let got = merged.iter().find(|r| r.offset <= sector && sector < r.end()).map(|r| {
                    (r.tag, r.zeroed, if r.zeroed { r.moffset } else { r.moffset + sector - r.offset })
                });
                assert_eq!(got, visible(&layers, sector), "sector {sector}");
            }
            let found = lookup(&merged, start, len);
            let covered: u64 = found.iter().map(|r| u64::from(r.length)).sum();
            let expect = (start..start + len).filter(|&s| visible(&layers, s).is_some()).count() as u64;
            assert_eq!(covered, expect);
            assert!(found.iter().all(|r| r.offset >= start && r.end() <= start + len && r.length > 0));
        }
    }

    #[test]
    fn contiguous_data_records_read_as_one_run() {
        let recs = [
            t(Record::data(0, 4, 8), 1),
            t(Record::data(4, 4, 12), 1),
            t(Record::data(8, 4, 16), 0),
            t(Record::zeroed(12, 4, 20), 0),
            t(Record::data(16, 4, 20), 0),
            t(Record::data(20, 4, 30), 0),
        ];
        let runs: Vec<_> = data_runs(&recs)
            .iter()
            .map(|r| (r.offset, r.sectors, r.moffset, r.tag))
            .collect();
        assert_eq!(
            runs,
            vec![(0, 8, 8, 1), (8, 4, 16, 0), (16, 4, 20, 0), (20, 4, 30, 0)]
        );
    }

    /// A source of `len` bytes where byte `i` is `i % 251`, so misplaced bytes show.
    fn pattern_source(len: usize) -> Arc<dyn LayerSource> {
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        Arc::new(crate::source::BytesSource::new(bytes, "pattern"))
    }

    /// What `read_extents` must return: data sectors copied from the pattern at their moffset,
    /// everything else zero.
    fn expected(start: u64, sectors: u64, records: &[Record]) -> Vec<u8> {
        let mut out = vec![0u8; (sectors * SECTOR) as usize];
        for r in records.iter().filter(|r| !r.zeroed) {
            for s in 0..u64::from(r.length) {
                for b in 0..SECTOR {
                    let at = ((r.offset + s - start) * SECTOR + b) as usize;
                    out[at] = (((r.moffset + s) * SECTOR + b) % 251) as u8;
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn single_and_multiple_runs_read_the_right_bytes() {
        let src = pattern_source(64 * 512);
        let resolve = |tag: u8| (tag == 0).then(|| Arc::clone(&src));
        let cases: Vec<(u64, u64, Vec<Record>)> = vec![
            // One run covering the whole request (returned without a copy).
            (4, 8, vec![Record::data(4, 8, 20)]),
            // One run after a hole and before a hole (the single-read path, then zeros).
            (0, 16, vec![Record::data(3, 5, 30)]),
            // Two records joined into one run, then a zeroed record.
            (
                0,
                12,
                vec![
                    Record::data(0, 4, 8),
                    Record::data(4, 4, 12),
                    Record::zeroed(8, 4, 0),
                ],
            ),
            // Several runs (the concurrent path).
            (
                2,
                20,
                vec![
                    Record::data(2, 3, 40),
                    Record::data(9, 2, 1),
                    Record::data(15, 7, 50),
                ],
            ),
            // Nothing mapped, or only zeroed records (static zeros up to 1 MiB, a buffer beyond).
            (0, 4, vec![]),
            (8, 2048, vec![Record::zeroed(8, 100, 0)]),
            (0, 2056, vec![]),
        ];
        for (start, sectors, recs) in cases {
            let got = read_extents(start, sectors, &recs, resolve).await.unwrap();
            assert_eq!(&got[..], &expected(start, sectors, &recs)[..], "{recs:?}");
        }
        // A tag naming no layer is an error, on the single-read path too.
        let bad = [t(Record::data(0, 2, 8), 3)];
        assert!(read_extents(0, 2, &bad, resolve).await.is_err());
    }

    #[test]
    fn pieces_assemble_in_place_with_zeros_between() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        // Out of order as buffer_unordered may return them; gaps at start, middle and end.
        let got = assemble(10, vec![(6, b(&[6, 7])), (1, b(&[1, 2, 3]))]).unwrap();
        assert_eq!(&got[..], &[0, 1, 2, 3, 0, 0, 6, 7, 0, 0]);
        assert_eq!(&assemble(3, vec![]).unwrap()[..], &[0, 0, 0]);
        assert_eq!(&assemble(2, vec![(0, b(&[9, 9]))]).unwrap()[..], &[9, 9]);
        // Overlapping or out-of-bounds pieces are errors, never misplaced bytes.
        assert!(assemble(10, vec![(0, b(&[1, 2, 3])), (2, b(&[4]))]).is_err());
        assert!(assemble(4, vec![(3, b(&[1, 2]))]).is_err());
        assert!(assemble(4, vec![(usize::MAX, b(&[1]))]).is_err());
    }

    #[test]
    fn misaligned_requests_are_refused() {
        assert!(sector_range(1, 512).is_err());
        assert!(sector_range(512, 100).is_err());
        assert_eq!(sector_range(1024, 1536).unwrap(), (2, 3));
    }
}
