//! overlaybd images: the LSMT layer stack (read-only lowers, optional writable upper) and the
//! `config.v1.json` image config, exposed as a block device.
