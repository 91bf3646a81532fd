//! The emulated SSD's media: RAM shared by every reactor, or a backing file. The
//! device's DMA engine moves a request's bytes: straight into RAM media
//! (`SharedRegion::dma_write_from`), or through the device's staging memory (its
//! controller SRAM) into a file. CMB bytes never pass a CPU mapping either way.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use peerless_core::mem::{self, Sgl, SharedRegion};

use crate::status::IoStatus;

/// Why a transfer failed: moving the request's buffers (the gate refused, no engine) or
/// the media itself; they map to different NVMe statuses.
#[derive(Debug)]
pub(crate) enum MediaError {
    Transfer(String),
    Media(String),
}

impl MediaError {
    /// The NVMe status and the reason, `media` being the status of a media failure.
    pub(crate) fn with_status(self, media: IoStatus) -> (IoStatus, String) {
        match self {
            MediaError::Transfer(why) => (IoStatus::DATA_TRANSFER_ERROR, why),
            MediaError::Media(why) => (media, why),
        }
    }
}

impl From<String> for MediaError {
    fn from(why: String) -> MediaError {
        MediaError::Media(why)
    }
}

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

    /// Whether transfers go through a channel's staging memory (file media only).
    pub(crate) fn needs_staging(&self) -> bool {
        matches!(self, Media::File { .. })
    }

    pub(crate) fn path(&self) -> Option<&PathBuf> {
        match self {
            Media::Ram(_) => None,
            Media::File { path, .. } => Some(path),
        }
    }

    /// Moves `src` onto the media at `offset` with the device's DMA: straight into RAM
    /// media, or through `staging` (the device's SRAM) into a file.
    pub(crate) fn write_from(&self, offset: u64, src: &Sgl<'_>, staging: &mut [u8]) -> Result<(), MediaError> {
        match self {
            Media::Ram(region) => {
                region.dma_write_from(to_usize(offset)?, src).map_err(|err| MediaError::Transfer(err.to_string()))
            }
            Media::File { file, .. } => in_pieces(src.len(), staging, |at, piece| {
                mem::dma_gather(src, at, piece).map_err(|err| MediaError::Transfer(err.to_string()))?;
                file.write_all_at(piece, offset + at as u64).map_err(|err| MediaError::Media(err.to_string()))
            }),
        }
    }

    /// Moves media bytes at `offset` into `dst`, the reverse of [`Media::write_from`].
    pub(crate) fn read_into(&self, offset: u64, dst: &mut Sgl<'_>, staging: &mut [u8]) -> Result<(), MediaError> {
        match self {
            Media::Ram(region) => {
                region.dma_read_into(to_usize(offset)?, dst).map_err(|err| MediaError::Transfer(err.to_string()))
            }
            Media::File { file, .. } => in_pieces(dst.len(), staging, |at, piece| {
                file.read_exact_at(piece, offset + at as u64).map_err(|err| MediaError::Media(err.to_string()))?;
                mem::dma_scatter(dst, at, piece).map_err(|err| MediaError::Transfer(err.to_string()))
            }),
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

/// Runs `step(offset, staging piece)` over `len` bytes in staging-sized pieces.
fn in_pieces(
    len: usize,
    staging: &mut [u8],
    mut step: impl FnMut(usize, &mut [u8]) -> Result<(), MediaError>,
) -> Result<(), MediaError> {
    debug_assert!(!staging.is_empty());
    let mut at = 0;
    while at < len {
        let n = (len - at).min(staging.len());
        step(at, &mut staging[..n])?;
        at += n;
    }
    Ok(())
}

fn to_usize(value: u64) -> Result<usize, String> {
    usize::try_from(value).map_err(|_| format!("{value} does not fit this platform"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(media: &Media, offset: u64, data: &[u8]) {
        media.write_from(offset, &Sgl::from_host(data).unwrap(), &mut [0u8; 1000]).unwrap();
    }

    fn read(media: &Media, offset: u64, len: usize) -> Result<Vec<u8>, MediaError> {
        let mut back = vec![0u8; len];
        media.read_into(offset, &mut Sgl::from_host_mut(&mut back).unwrap(), &mut [0u8; 1000])?;
        Ok(back)
    }

    fn check(media: &Media) {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 253) as u8).collect();
        write(media, 1000, &data);
        assert_eq!(read(media, 1000, 3000).unwrap(), data);
        media.zero(1500, 1000).unwrap();
        let back = read(media, 1000, 3000).unwrap();
        assert_eq!(back[..500], data[..500]);
        assert!(back[500..1500].iter().all(|byte| *byte == 0));
        assert_eq!(back[1500..], data[1500..]);
        media.flush().unwrap();
        assert!(read(media, 8192 - 10, 3000).is_err(), "reads past the end fail");
    }

    #[test]
    fn ram_and_file_media_keep_what_was_written() {
        check(&Media::ram(8192).unwrap());
        let path = std::env::temp_dir().join(format!("nvmesim-media-{}", std::process::id()));
        check(&Media::file(path.clone(), 8192).unwrap());
        // Reopening keeps the bytes and never shrinks the file.
        let media = Media::file(path.clone(), 4096).unwrap();
        assert_eq!(read(&media, 1000, 10).unwrap(), (0..10u8).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
        std::fs::remove_file(path).unwrap();
    }
}
