//! The process-wide recording writer: one thread that owns every open recording file, fed
//! by a bounded queue ([`Recordings`]), and each call's non-blocking handle on it
//! ([`Recorder`]).
//!
//! Files are written as `<dir>/<stem>.part` (header first, rewritten with the final sizes at
//! the end), flushed to disk and renamed to `<dir>/<stem>.wav` when the call's last block is
//! in; with an [`Uploader`] the finished file is then uploaded (on the tokio runtime) and
//! removed. A directory that cannot be written fails that recording (logged, counted in
//! `relay_recordings_total{result="failed"}`); the call goes on.

use super::timeline::{Block, Pause};
use super::upload::Uploader;
use super::wav;
use crate::obs::labels::RecordingResult;
use crate::obs::metrics::Metrics;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// The writer's pause between batches: at most this much later a block is on disk; the
/// queue must hold what the calls hand over meanwhile (200 calls: 20 blocks per 50 ms).
pub const BATCH_PAUSE: Duration = Duration::from_millis(50);

/// What a finished recording reports (to the call's record and the post-call webhook).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finished {
    /// Where the file is (`<dir>/<stem>.wav`).
    pub location: String,
    /// Seconds of audio.
    pub duration_secs: f64,
    /// File size, bytes.
    pub bytes: u64,
    /// Whether blocks were lost (written as silence) or agent audio was not recorded.
    pub degraded: bool,
    /// Paused spans, seconds from the stream's start: `[from, to]`.
    pub pauses: Vec<[f64; 2]>,
}

/// Called with each finished recording, once it is where it stays (the post-call webhook).
pub type OnFinished = Arc<dyn Fn(&FinishNote, &Finished) + Send + Sync>;

/// The call's side of a finish: who it was and what the timeline knew.
#[derive(Debug, Clone, Default)]
pub struct FinishNote {
    /// The call SID.
    pub call_sid: String,
    /// The stream SID.
    pub stream_sid: String,
    /// The agent dialect's label.
    pub agent: &'static str,
    /// Paused spans.
    pub pauses: Vec<Pause>,
    /// The call's own side lost audio (agent audio beyond the timeline's bound).
    pub degraded: bool,
}

enum Msg {
    Open { id: u64, stem: String },
    Block { id: u64, gap: u64, block: Block },
    Finish { id: u64, gap: u64, note: FinishNote },
}

/// Recordings opened and not yet finished, for the drain.
#[derive(Debug, Default)]
struct Idle {
    open: Mutex<usize>,
    changed: Condvar,
}

impl Idle {
    fn release(&self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        *open = open.saturating_sub(1);
        self.changed.notify_all();
    }
}

/// The process's recordings: the writer thread's queue and what is in progress.
pub struct Recordings {
    tx: SyncSender<Msg>,
    next_id: AtomicU64,
    idle: Arc<Idle>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    target: Option<super::upload::S3Target>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("dir", &self.dir)
            .finish()
    }
}

impl Recordings {
    /// Starts the writer thread for recordings in `dir` (created if missing; an error here
    /// is logged and every recording then fails, counted), with a queue of `queue_blocks`.
    ///
    /// With `uploader`, finished files are uploaded on the current tokio runtime.
    ///
    /// # Errors
    /// The thread could not be spawned, or an uploader was given outside a tokio runtime.
    pub fn start(
        dir: PathBuf,
        queue_blocks: usize,
        metrics: Arc<Metrics>,
        on_finished: Option<OnFinished>,
        uploader: Option<Arc<Uploader>>,
    ) -> std::io::Result<Recordings> {
        let target = uploader.as_ref().map(|u| u.target().clone());
        let upload = match uploader {
            None => None,
            Some(u) => Some((
                u,
                tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?,
            )),
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "recording directory cannot be created");
        }
        let (tx, rx) = sync_channel(queue_blocks.max(1));
        let idle = Arc::new(Idle::default());
        let w = Writer {
            dir: dir.clone(),
            files: HashMap::new(),
            metrics: metrics.clone(),
            idle: idle.clone(),
            on_finished,
            upload,
            scratch: Vec::new(),
        };
        std::thread::Builder::new()
            .name("recording-writer".into())
            .spawn(move || w.run(rx))?;
        Ok(Recordings {
            tx,
            next_id: AtomicU64::new(1),
            idle,
            dir,
            metrics,
            target,
        })
    }

    /// Where a recording named `stem` ends up: its `s3://` URL when uploads are on, else
    /// its path.
    pub fn location(&self, stem: &str) -> String {
        let name = format!("{stem}.wav");
        match &self.target {
            Some(t) => t.url(&t.key(&name)),
            None => self.dir.join(name).display().to_string(),
        }
    }

    /// Opens a recording named `stem` (see [`super::file_stem`]) and returns the call's
    /// handle. Never waits: with the queue full the recording starts degraded and opens
    /// with the call's first block that gets in.
    pub fn open(&self, stem: String) -> Recorder {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut open = self.idle.open.lock().unwrap_or_else(|e| e.into_inner());
            *open += 1;
        }
        let location = self.location(&stem);
        let mut r = Recorder {
            id,
            tx: self.tx.clone(),
            gap: 0,
            degraded: false,
            opened: false,
            stem,
            location,
            metrics: self.metrics.clone(),
            idle: self.idle.clone(),
            finished: false,
        };
        r.try_open();
        r
    }

    /// Waits until every recording started so far is finished on disk, or `timeout`
    /// passes (blocking: call from a blocking context). Returns whether all finished.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let open = self.idle.open.lock().unwrap_or_else(|e| e.into_inner());
        let (open, _) = self
            .idle
            .changed
            .wait_timeout_while(open, timeout, |n| *n > 0)
            .unwrap_or_else(|e| e.into_inner());
        *open == 0
    }
}

/// A call's handle on its recording. Every method returns at once.
#[derive(Debug)]
pub struct Recorder {
    id: u64,
    tx: SyncSender<Msg>,
    /// Samples lost since the last block that got in (written as silence before it).
    gap: u64,
    degraded: bool,
    opened: bool,
    stem: String,
    location: String,
    metrics: Arc<Metrics>,
    idle: Arc<Idle>,
    finished: bool,
}

impl Drop for Recorder {
    /// A call task that ended without [`Recorder::finish`] (a panic) still closes its file,
    /// marked degraded, so the drain does not wait for it.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        let msg = Msg::Finish {
            id: self.id,
            gap: self.gap,
            note: FinishNote {
                degraded: true,
                ..FinishNote::default()
            },
        };
        if !self.opened || self.tx.try_send(msg).is_err() {
            self.release();
        }
    }
}

impl Recorder {
    fn try_open(&mut self) {
        let msg = Msg::Open {
            id: self.id,
            stem: self.stem.clone(),
        };
        // A full queue: the open is tried again with the first block (whose loss, if it
        // fails again, marks the recording degraded and is logged once).
        self.opened = self.tx.try_send(msg).is_ok();
    }

    /// Where the file will be.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether any block was lost so far.
    pub fn degraded(&self) -> bool {
        self.degraded
    }

    /// Hands a block to the writer; a full queue loses it (degraded, counted).
    pub fn push(&mut self, block: Block) {
        if !self.opened {
            self.try_open();
            if !self.opened {
                self.lost(block.left.len() as u64);
                return;
            }
        }
        let n = block.left.len() as u64;
        let msg = Msg::Block {
            id: self.id,
            gap: self.gap,
            block,
        };
        match self.tx.try_send(msg) {
            Ok(()) => self.gap = 0,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.lost(n),
        }
    }

    fn lost(&mut self, samples: u64) {
        if !self.degraded {
            warn!(
                recording = %self.location,
                "recording writer behind: recording degraded (lost audio is written as silence)"
            );
        }
        self.degraded = true;
        self.gap += samples;
        self.metrics.recording_blocks_dropped.increment(1);
    }

    /// The call ended: the last block (if any) and the finish. The finish is never lost: a
    /// full queue hands it to a blocking task, which waits for room (the call does not).
    pub fn finish(mut self, last: Option<Block>, mut note: FinishNote) {
        if let Some(b) = last {
            self.push(b);
        }
        self.finished = true;
        note.degraded |= self.degraded;
        let msg = Msg::Finish {
            id: self.id,
            gap: self.gap,
            note,
        };
        if !self.opened {
            // Nothing ever reached the writer: count it failed here.
            self.metrics.recording(RecordingResult::Failed);
            warn!(recording = %self.location, "recording never opened: the writer queue was full");
            self.release();
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(msg)) => {
                let tx = self.tx.clone();
                let handle = tokio::runtime::Handle::try_current();
                let send = move || {
                    let _ = tx.send(msg);
                };
                match handle {
                    Ok(h) => {
                        h.spawn_blocking(send);
                    }
                    Err(_) => send(),
                }
            }
            Err(TrySendError::Disconnected(_)) => self.release(),
        }
    }

    /// The writer will never see this recording's finish: it no longer counts as open.
    fn release(&self) {
        self.idle.release();
    }
}

struct Open {
    file: Option<File>,
    part: PathBuf,
    samples: u64,
}

struct Writer {
    dir: PathBuf,
    files: HashMap<u64, Open>,
    metrics: Arc<Metrics>,
    idle: Arc<Idle>,
    on_finished: Option<OnFinished>,
    upload: Option<(Arc<Uploader>, tokio::runtime::Handle)>,
    scratch: Vec<u8>,
}

impl Writer {
    /// Takes what is queued in batches: after each batch it sleeps [`BATCH_PAUSE`], so a
    /// call handing over a block finds the writer not waiting on the queue and sends
    /// without waking it (one wake-up per batch, not one per block of every call).
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(first) = rx.recv() {
            self.handle(first);
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            std::thread::sleep(BATCH_PAUSE);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Open { id, stem } => self.open(id, &stem),
            Msg::Block { id, gap, block } => self.block(id, gap, &block),
            Msg::Finish { id, gap, note } => self.finish(id, gap, &note),
        }
    }

    fn open(&mut self, id: u64, stem: &str) {
        let part = self.dir.join(format!("{stem}.part"));
        // Unbuffered: each write is a whole block (8 KB, 500 ms of call), so a buffer
        // would only add its size to every open recording.
        let file = File::create(&part).and_then(|mut f| {
            f.write_all(&wav::header(0))?;
            Ok(f)
        });
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(file = %part.display(), error = %e, "recording cannot be written");
                None
            }
        };
        self.files.insert(
            id,
            Open {
                file,
                part,
                samples: 0,
            },
        );
    }

    fn write(&mut self, id: u64, gap: u64, block: Option<&Block>) {
        let Some(o) = self.files.get_mut(&id) else {
            return;
        };
        let Some(f) = o.file.as_mut() else { return };
        self.scratch.clear();
        self.scratch
            .resize(usize::try_from(gap * 2).unwrap_or(0), wav::SILENCE);
        if let Some(b) = block {
            wav::interleave(&b.left, &b.right, &mut self.scratch);
        }
        match f.write_all(&self.scratch) {
            Ok(()) => {
                o.samples += (self.scratch.len() / 2) as u64;
                self.metrics
                    .recording_bytes
                    .increment(self.scratch.len() as u64);
            }
            Err(e) => {
                warn!(file = %o.part.display(), error = %e, "recording write failed: recording abandoned");
                o.file = None;
            }
        }
    }

    fn block(&mut self, id: u64, gap: u64, block: &Block) {
        self.write(id, gap, Some(block));
    }

    fn finish(&mut self, id: u64, gap: u64, note: &FinishNote) {
        if gap > 0 {
            self.write(id, gap, None);
        }
        let (done, samples) = match self.files.remove(&id) {
            Some(Open {
                file: Some(f),
                part,
                samples,
            }) => match close(f, &part, samples) {
                Ok(done) => (done, samples),
                Err(e) => {
                    warn!(file = %part.display(), error = %e, "recording could not be finished");
                    return self.done(RecordingResult::Failed);
                }
            },
            Some(Open { part, .. }) => {
                let _ = std::fs::remove_file(&part);
                return self.done(RecordingResult::Failed);
            }
            None => {
                debug!(id, "finish of an unknown recording");
                return self.done(RecordingResult::Failed);
            }
        };
        let finished = Finished {
            location: done.display().to_string(),
            duration_secs: samples as f64 / f64::from(wav::SAMPLE_RATE),
            bytes: samples * 2 + wav::HEADER_BYTES as u64,
            degraded: note.degraded,
            pauses: note
                .pauses
                .iter()
                .map(|p| {
                    let s = |v: u64| v as f64 / f64::from(wav::SAMPLE_RATE);
                    [s(p.from), s(p.to.unwrap_or(samples))]
                })
                .collect(),
        };
        let result = if note.degraded {
            RecordingResult::Degraded
        } else {
            RecordingResult::Complete
        };
        let Some((uploader, rt)) = self.upload.clone() else {
            stored(note, &finished, self.on_finished.as_ref());
            return self.done(result);
        };
        let (note, idle, metrics, cb) = (
            note.clone(),
            self.idle.clone(),
            self.metrics.clone(),
            self.on_finished.clone(),
        );
        rt.spawn(async move {
            let mut finished = finished;
            let result = match uploader.upload(&done).await {
                Ok(url) => {
                    finished.location = url;
                    stored(&note, &finished, cb.as_ref());
                    result
                }
                Err(_) => RecordingResult::Failed,
            };
            metrics.recording(result);
            idle.release();
        });
    }

    fn done(&self, result: RecordingResult) {
        self.metrics.recording(result);
        self.idle.release();
    }
}

/// A recording reached its place (`finished.location`): logged and reported.
fn stored(note: &FinishNote, finished: &Finished, cb: Option<&OnFinished>) {
    info!(
        recording = %finished.location,
        duration_secs = finished.duration_secs,
        degraded = finished.degraded,
        "recording complete"
    );
    if let Some(cb) = cb {
        cb(note, finished);
    }
}

/// Writes the final header, flushes to disk and renames `.part` to `.wav`.
fn close(mut file: File, part: &Path, samples: u64) -> std::io::Result<PathBuf> {
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&wav::header(samples))?;
    file.sync_data()?;
    let done = part.with_extension("wav");
    std::fs::rename(part, &done)?;
    Ok(done)
}
