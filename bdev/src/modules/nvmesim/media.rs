//! The emulated SSD's media: RAM shared by every reactor, or a backing file. Both are
//! reached only through the device's host staging memory (its controller SRAM); CMB
//! bytes reach staging by the device's DMA engine, never by a CPU mapping.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use peerless_core::mem::{Sgl, SharedRegion};

pub(crate) enum Media {
    Ram(SharedRegion),
    /// Plain positioned reads and writes, which may block the reactor on a cold page
    /// cache: the file makes the emulated disk persist; `uring` is the module for speed.
    File {
        file: File,
        path: PathBuf,
        zeroes: Box<[u8]>,
    },
}

/// Zeroes written per step when a file's blocks are zeroed.
const ZERO_CHUNK_BYTES: usize = 64 * 1024;

impl Media {
    pub(crate) fn ram(bytes: u64) -> Result<Media, String> {
        let len = usize::try_from(bytes).map_err(|_| format!("{bytes} bytes do not fit this platform"))?;
        SharedRegion::alloc(len).map(Media::Ram).map_err(|err| format!("cannot allocate {bytes} bytes of media: {err}"))
    }

    /// Opens (creating if needed) `path` and grows it to `bytes`; never shrinks it, so
    /// data beyond a smaller emulated disk survives.
    pub(crate) fn file(path: PathBuf, bytes: u64) -> Result<Media, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| format!("{}: cannot open: {err}", path.display()))?;
        let len = file.metadata().map_err(|err| format!("{}: {err}", path.display()))?.len();
        if len < bytes {
            file.set_len(bytes).map_err(|err| format!("{}: cannot grow to {bytes} bytes: {err}", path.display()))?;
        }
        Ok(Media::File { file, path, zeroes: vec![0u8; ZERO_CHUNK_BYTES].into_boxed_slice() })
    }

    pub(crate) fn path(&self) -> Option<&PathBuf> {
        match self {
            Media::Ram(_) => None,
            Media::File { path, .. } => Some(path),
        }
    }

    pub(crate) fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), String> {
        match self {
            Media::Ram(region) => {
                let mut sgl = Sgl::from_host_mut(dst).map_err(|err| err.to_string())?;
                region.read_into(to_usize(offset)?, &mut sgl).map_err(|err| err.to_string())
            }
            Media::File { file, .. } => file.read_exact_at(dst, offset).map_err(|err| err.to_string()),
        }
    }

    pub(crate) fn write(&self, offset: u64, src: &[u8]) -> Result<(), String> {
        match self {
            Media::Ram(region) => {
                let sgl = Sgl::from_host(src).map_err(|err| err.to_string())?;
                region.write_from(to_usize(offset)?, &sgl).map_err(|err| err.to_string())
            }
            Media::File { file, .. } => file.write_all_at(src, offset).map_err(|err| err.to_string()),
        }
    }

    /// Zeroes `len` bytes at `offset`.
    pub(crate) fn zero(&self, offset: u64, len: u64) -> Result<(), String> {
        match self {
            Media::Ram(region) => region.fill(to_usize(offset)?, to_usize(len)?, 0).map_err(|err| err.to_string()),
            Media::File { file, zeroes, .. } => {
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeroes.len() as u64) as usize;
                    file.write_all_at(&zeroes[..n], offset + done).map_err(|err| err.to_string())?;
                    done += n as u64;
                }
                Ok(())
            }
        }
    }

    pub(crate) fn flush(&self) -> Result<(), String> {
        match self {
            Media::Ram(_) => Ok(()),
            Media::File { file, .. } => file.sync_data().map_err(|err| err.to_string()),
        }
    }
}

fn to_usize(value: u64) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| format!("{value} does not fit this platform"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(media: &Media) {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        media.write(1000, &data).unwrap();
        let mut back = vec![0u8; 3000];
        media.read(1000, &mut back).unwrap();
        assert_eq!(back, data);
        media.zero(1500, 1000).unwrap();
        media.read(1000, &mut back).unwrap();
        assert_eq!(back[..500], data[..500]);
        assert!(back[500..1500].iter().all(|byte| *byte == 0));
        assert_eq!(back[1500..], data[1500..]);
        media.flush().unwrap();
        assert!(media.read(8192 - 10, &mut back).is_err(), "reads past the end fail");
    }

    #[test]
    fn ram_and_file_media_keep_what_was_written() {
        check(&Media::ram(8192).unwrap());
        let path = std::env::temp_dir().join(format!("nvmesim-media-{}", std::process::id()));
        check(&Media::file(path.clone(), 8192).unwrap());
        // Reopening keeps the bytes and never shrinks the file.
        let media = Media::file(path.clone(), 4096).unwrap();
        let mut back = [0u8; 10];
        media.read(1000, &mut back).unwrap();
        assert_eq!(back[..], (0..10u8).collect::<Vec<_>>()[..]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        std::fs::remove_file(path).unwrap();
    }
}
