//! Watching one file for content changes.
//!
//! This module owns the "file watching" part of the source contract: it turns
//! a path into a stream of [`FileEvent`]s that carries the file's bytes at
//! start and again whenever the SHA-256 of those bytes changes, plus an
//! [`FileEvent::Unreadable`] whenever the file cannot be read. Parsing and
//! validating the bytes is left to the consumer.
//!
//! How changes are noticed:
//!
//! * The *parent directory* is watched (not the file) because the usual ways
//!   of replacing a file swap the directory entry rather than write to the
//!   inode: editors write a temp file and rename it over the original, and
//!   Kubernetes ConfigMap volumes atomically rename a new `..data` symlink over
//!   the old one. A watch on the file itself would stay on the old inode.
//! * Any event in that directory starts a debounce timer; a burst of events
//!   collapses into one read once it has been quiet for `debounce`.
//! * The file is also re-read every `poll_interval`, which covers every case
//!   the directory watch cannot see: inotify unavailable or out of watches,
//!   the parent directory itself being replaced, or a symlink pointing outside
//!   the watched directory.
//!
//! Reads follow symlinks, and hashing the content (rather than trusting event
//! kinds or mtimes) means spurious events and polls cost one read and nothing
//! more.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// What the watcher reports about one file.
#[derive(Debug)]
pub enum FileEvent {
    /// The file's bytes; sent at start and whenever the SHA-256 of the content
    /// changes (including when the file comes back after being unreadable).
    Content(Arc<[u8]>),
    /// The file cannot be read (missing, permission denied, ...). Sent once
    /// per distinct [`io::ErrorKind`], not on every failed re-read.
    Unreadable(io::Error),
}

/// Tuning for [`spawn_file_watch`].
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// How long the directory must be quiet after an event before re-reading.
    pub debounce: Duration,
    /// Re-read unconditionally this often, whatever the directory watch says.
    pub poll_interval: Duration,
    /// Use a notify (inotify) watch on the parent directory. When `false`, or
    /// when the watch cannot be set up, only polling is used.
    pub use_notify: bool,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            poll_interval: Duration::from_secs(5),
            use_notify: true,
        }
    }
}

/// Events are small and the consumer normally keeps up; a little slack keeps
/// the watcher from stalling on a consumer that is briefly busy.
const CHANNEL_CAPACITY: usize = 8;

/// `tokio::time::interval` panics on a zero period, and a zero interval would
/// be a busy loop anyway.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Spawns a tokio task watching `path` and returns the receiving end of its
/// events. The first event describes the file's state at start.
///
/// The task ends when `cancel` fires or the receiver is dropped. Must be
/// called from within a tokio runtime.
pub fn spawn_file_watch(
    path: PathBuf,
    settings: WatchSettings,
    cancel: CancellationToken,
) -> mpsc::Receiver<FileEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(watch_file(path, settings, cancel, tx));
    rx
}

/// The body of the task started by [`spawn_file_watch`].
async fn watch_file(
    path: PathBuf,
    settings: WatchSettings,
    cancel: CancellationToken,
    tx: mpsc::Sender<FileEvent>,
) {
    // Capacity 1: a pending wake-up already means "something happened", so
    // the notify thread can drop further ones instead of ever blocking.
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    // Set up before the first read so no change between the two is missed.
    // Kept alive for the whole loop: dropping it removes the inotify watch.
    let watcher = if settings.use_notify {
        start_notify(&path, wake_tx).await
    } else {
        None
    };
    let mut notify_alive = watcher.is_some();

    let mut tracker = ChangeTracker::default();
    if !refresh(&path, &mut tracker, &tx, &cancel).await {
        return;
    }

    let poll_every = settings.poll_interval.max(MIN_POLL_INTERVAL);
    let mut poll = tokio::time::interval_at(Instant::now() + poll_every, poll_every);
    // After a slow read, wait a full interval rather than catching up in a burst.
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut debounce_deadline: Option<Instant> = None;

    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tx.closed() => return,
            woke = wake_rx.recv(), if notify_alive => match woke {
                // Trailing debounce: each event pushes the read back, so a burst
                // (truncate + write + close, or create + write + rename) is read
                // once, after it settles. If events never stop, the poll still
                // bounds how stale the content can get.
                Some(()) => debounce_deadline = Some(Instant::now() + settings.debounce),
                // Only happens if notify dropped our handler; polling carries on.
                None => {
                    tracing::warn!(path = %path.display(), "file watch ended, polling only");
                    notify_alive = false;
                }
            },
            () = tokio::time::sleep_until(debounce_deadline.unwrap_or_else(Instant::now)),
                if debounce_deadline.is_some() =>
            {
                debounce_deadline = None;
                if !refresh(&path, &mut tracker, &tx, &cancel).await {
                    return;
                }
            }
            _ = poll.tick() => {
                // A poll can land in the middle of an in-place write. A change it sees
                // is confirmed by a read after the debounce, like a notify event,
                // rather than reported at once.
                if tracker.differs(&tokio::fs::read(&path).await) && debounce_deadline.is_none() {
                    debounce_deadline = Some(Instant::now() + settings.debounce);
                }
            }
        }
    }
}

/// Watches the parent directory of `path`, waking the task through `wake`.
/// Returns `None` (after logging why) if the watch cannot be set up.
async fn start_notify(path: &Path, wake: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let dir = watch_dir(path).to_path_buf();
    let blocking_dir = dir.clone();
    // notify's `watch` waits synchronously for its own event-loop thread to
    // answer, so keep it off the async worker threads.
    let result = tokio::task::spawn_blocking(move || create_watcher(&blocking_dir, wake))
        .await
        .map_err(|join_error| join_error.to_string())
        .and_then(|created| created.map_err(|error| error.to_string()));
    match result {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                dir = %dir.display(),
                %error,
                "cannot watch directory, falling back to polling only"
            );
            None
        }
    }
}

fn create_watcher(dir: &Path, wake: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    // Runs on notify's thread: it must never block, hence `try_send`. A full
    // channel means a wake-up is already pending; a closed one means the task
    // is gone. Either way there is nothing more to do. Errors (e.g. an
    // overflowed event queue) wake the task too: a re-read is the safe answer.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event
            .as_ref()
            .is_ok_and(|event| is_read_only_access(&event.kind))
        {
            return;
        }
        let _ = wake.try_send(());
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Opening or reading a file changes nothing, and our own reads generate such
/// events; reacting to them would re-read forever.
fn is_read_only_access(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// The directory whose entries decide what `path` resolves to.
fn watch_dir(path: &Path) -> &Path {
    match path.parent() {
        // A bare file name: its parent is the current directory.
        Some(parent) if parent.as_os_str().is_empty() => Path::new("."),
        Some(parent) => parent,
        // `/` or empty: nothing above it to watch, so watch the path itself.
        None => path,
    }
}

/// Reads the file and sends whatever changed. Returns `false` when the task
/// should stop (cancelled, or the receiver is gone).
async fn refresh(
    path: &Path,
    tracker: &mut ChangeTracker,
    tx: &mpsc::Sender<FileEvent>,
    cancel: &CancellationToken,
) -> bool {
    let Some(event) = tracker.observe(tokio::fs::read(path).await) else {
        return true;
    };
    match &event {
        FileEvent::Content(bytes) => {
            tracing::debug!(path = %path.display(), len = bytes.len(), "file content changed");
        }
        FileEvent::Unreadable(error) => {
            tracing::debug!(path = %path.display(), %error, "file unreadable");
        }
    }
    // A slow consumer must not make the task ignore cancellation.
    tokio::select! {
        sent = tx.send(event) => sent.is_ok(),
        () = cancel.cancelled() => false,
    }
}

/// Decides which read results are worth reporting: the last reported state is
/// either a content hash or an error kind, and only a different state is news.
#[derive(Debug, Default)]
struct ChangeTracker {
    last_hash: Option<[u8; 32]>,
    last_error: Option<io::ErrorKind>,
}

impl ChangeTracker {
    /// Whether `read` would be reported, without recording it.
    fn differs(&self, read: &io::Result<Vec<u8>>) -> bool {
        match read {
            Ok(bytes) => self.last_hash != Some(Sha256::digest(bytes).into()),
            Err(error) => self.last_error != Some(error.kind()),
        }
    }

    fn observe(&mut self, read: io::Result<Vec<u8>>) -> Option<FileEvent> {
        match read {
            Ok(bytes) => {
                let hash: [u8; 32] = Sha256::digest(&bytes).into();
                self.last_error = None;
                if self.last_hash == Some(hash) {
                    return None;
                }
                self.last_hash = Some(hash);
                Some(FileEvent::Content(bytes.into()))
            }
            Err(error) => {
                // Forget the hash so the same content reappearing is reported:
                // the consumer has to learn that the file came back.
                self.last_hash = None;
                if self.last_error == Some(error.kind()) {
                    return None;
                }
                self.last_error = Some(error.kind());
                Some(FileEvent::Unreadable(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// Generous: only reached when something is broken, never on success.
    const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Settings where only the directory watch can notice a change within
    /// `EVENT_TIMEOUT`, so these tests really exercise notify.
    fn notify_only() -> WatchSettings {
        WatchSettings {
            debounce: Duration::from_millis(50),
            poll_interval: Duration::from_secs(3600),
            use_notify: true,
        }
    }

    /// Settings with a fast poll, for tests about what gets (not) reported.
    fn fast_poll() -> WatchSettings {
        WatchSettings {
            poll_interval: Duration::from_millis(50),
            ..notify_only()
        }
    }

    async fn next_event(rx: &mut mpsc::Receiver<FileEvent>) -> FileEvent {
        tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
            .await
            .expect("timed out waiting for a file event")
            .expect("watch task ended unexpectedly")
    }

    async fn expect_content(rx: &mut mpsc::Receiver<FileEvent>, expected: &[u8]) {
        match next_event(rx).await {
            FileEvent::Content(bytes) => assert_eq!(
                &*bytes,
                expected,
                "got {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            other => panic!("expected content {expected:?}, got {other:?}"),
        }
    }

    async fn expect_unreadable(rx: &mut mpsc::Receiver<FileEvent>, kind: io::ErrorKind) {
        match next_event(rx).await {
            FileEvent::Unreadable(error) => assert_eq!(error.kind(), kind, "{error}"),
            other => panic!("expected unreadable ({kind:?}), got {other:?}"),
        }
    }

    /// Gives the watcher time to process what just happened, so that it is
    /// handled separately from the next change. Never followed by an assertion
    /// on its own: if it is too short the test gets weaker, not flaky.
    async fn let_watcher_settle() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    fn watch(path: PathBuf, settings: WatchSettings) -> mpsc::Receiver<FileEvent> {
        spawn_file_watch(path, settings, CancellationToken::new())
    }

    #[tokio::test]
    async fn reports_initial_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let mut rx = watch(path, notify_only());
        expect_content(&mut rx, b"v1").await;
    }

    #[tokio::test]
    async fn notices_in_place_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let mut rx = watch(path.clone(), notify_only());
        expect_content(&mut rx, b"v1").await;

        fs::write(&path, "v2").unwrap();
        expect_content(&mut rx, b"v2").await;
    }

    #[tokio::test]
    async fn notices_write_temp_then_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let mut rx = watch(path.clone(), notify_only());
        expect_content(&mut rx, b"v1").await;

        let temp = dir.path().join(".services.yaml.swp");
        fs::write(&temp, "v2").unwrap();
        fs::rename(&temp, &path).unwrap();
        expect_content(&mut rx, b"v2").await;
    }

    #[tokio::test]
    async fn notices_configmap_data_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("..2026_a")).unwrap();
        fs::write(root.join("..2026_a/services.yaml"), "v1").unwrap();
        symlink("..2026_a", root.join("..data")).unwrap();
        symlink("..data/services.yaml", root.join("services.yaml")).unwrap();

        let mut rx = watch(root.join("services.yaml"), notify_only());
        expect_content(&mut rx, b"v1").await;

        // What the kubelet does on update: new timestamped dir, new symlink
        // under a temp name, atomic rename over `..data`, old dir removed.
        fs::create_dir(root.join("..2026_b")).unwrap();
        fs::write(root.join("..2026_b/services.yaml"), "v2").unwrap();
        symlink("..2026_b", root.join("..data_tmp")).unwrap();
        fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        fs::remove_dir_all(root.join("..2026_a")).unwrap();
        expect_content(&mut rx, b"v2").await;
    }

    #[tokio::test]
    async fn identical_rewrite_is_not_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        // Fast poll: the unchanged file is also re-read many times meanwhile.
        let mut rx = watch(path.clone(), fast_poll());
        expect_content(&mut rx, b"v1").await;

        // Atomic replaces: an in-place write can be read half-done (empty) by a poll,
        // which is a real change of content, not what this test is about.
        let replace = |text: &str| {
            let tmp = dir.path().join("services.yaml.tmp");
            fs::write(&tmp, text).unwrap();
            fs::rename(&tmp, &path).unwrap();
        };
        replace("v1");
        let_watcher_settle().await;
        replace("v2");
        // Had the rewrite (or any poll) been reported, this would see "v1".
        expect_content(&mut rx, b"v2").await;
    }

    #[test]
    fn differs_peeks_without_recording() {
        let mut tracker = ChangeTracker::default();
        assert!(tracker.differs(&Ok(b"v1".to_vec())));
        assert!(
            tracker.differs(&Ok(b"v1".to_vec())),
            "peeking records nothing"
        );
        assert!(tracker.observe(Ok(b"v1".to_vec())).is_some());
        assert!(!tracker.differs(&Ok(b"v1".to_vec())));
        assert!(
            tracker.differs(&Ok(Vec::new())),
            "a half-written read is a change to confirm"
        );
    }

    #[tokio::test]
    async fn missing_at_start_then_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");

        let mut rx = watch(path.clone(), fast_poll());
        expect_unreadable(&mut rx, io::ErrorKind::NotFound).await;

        // Several failed polls happen here; none of them may be reported again.
        let_watcher_settle().await;
        fs::write(&path, "v1").unwrap();
        expect_content(&mut rx, b"v1").await;
    }

    #[tokio::test]
    async fn deletion_is_reported_and_return_of_same_content_is_resent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let mut rx = watch(path.clone(), notify_only());
        expect_content(&mut rx, b"v1").await;

        fs::remove_file(&path).unwrap();
        expect_unreadable(&mut rx, io::ErrorKind::NotFound).await;

        fs::write(&path, "v1").unwrap();
        expect_content(&mut rx, b"v1").await;
    }

    #[tokio::test]
    async fn poll_only_mode_notices_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let settings = WatchSettings {
            debounce: Duration::from_millis(50),
            poll_interval: Duration::from_millis(200),
            use_notify: false,
        };
        let mut rx = watch(path.clone(), settings);
        expect_content(&mut rx, b"v1").await;

        fs::write(&path, "v2").unwrap();
        expect_content(&mut rx, b"v2").await;
    }

    #[tokio::test]
    async fn poll_covers_replaced_parent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("services.yaml"), "v1").unwrap();

        let settings = WatchSettings {
            poll_interval: Duration::from_millis(200),
            ..notify_only()
        };
        let mut rx = watch(conf.join("services.yaml"), settings);
        expect_content(&mut rx, b"v1").await;

        // The inotify watch follows the old directory to its new name, so
        // only the poll can see the file in the new directory.
        fs::rename(&conf, dir.path().join("conf.old")).unwrap();
        fs::create_dir(&conf).unwrap();
        fs::write(conf.join("services.yaml"), "v2").unwrap();
        expect_content(&mut rx, b"v2").await;
    }

    #[test]
    fn watch_dir_handles_bare_names_and_root() {
        assert_eq!(watch_dir(Path::new("services.yaml")), Path::new("."));
        assert_eq!(watch_dir(Path::new("/etc/x.yaml")), Path::new("/etc"));
        assert_eq!(watch_dir(Path::new("/")), Path::new("/"));
    }

    #[tokio::test]
    async fn cancellation_stops_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let cancel = CancellationToken::new();
        let mut rx = spawn_file_watch(path, notify_only(), cancel.clone());
        expect_content(&mut rx, b"v1").await;

        cancel.cancel();
        let end = tokio::time::timeout(EVENT_TIMEOUT, rx.recv())
            .await
            .expect("task did not stop after cancellation");
        assert!(end.is_none(), "unexpected event after cancel: {end:?}");
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("services.yaml");
        fs::write(&path, "v1").unwrap();

        let (tx, mut rx) = mpsc::channel(CHANNEL_CAPACITY);
        let task = tokio::spawn(watch_file(
            path,
            notify_only(),
            CancellationToken::new(),
            tx,
        ));
        expect_content(&mut rx, b"v1").await;

        drop(rx);
        tokio::time::timeout(EVENT_TIMEOUT, task)
            .await
            .expect("task did not stop after the receiver was dropped")
            .expect("task panicked");
    }

    #[test]
    fn read_only_access_events_are_ignored() {
        use notify::event::{CreateKind, ModifyKind};
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!is_read_only_access(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(!is_read_only_access(&EventKind::Create(CreateKind::File)));
        assert!(!is_read_only_access(&EventKind::Modify(ModifyKind::Any)));
    }

    /// One read result, drawn from a small alphabet so repeats are common.
    fn read_result() -> impl Strategy<Value = Result<Vec<u8>, io::ErrorKind>> {
        prop_oneof![
            prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), Vec::new()]).prop_map(Ok),
            prop::sample::select(vec![
                io::ErrorKind::NotFound,
                io::ErrorKind::PermissionDenied
            ])
            .prop_map(Err),
        ]
    }

    proptest! {
        /// The tracker reports a read exactly when it differs from the last
        /// reported state, with content compared by bytes and errors by kind.
        #[test]
        fn tracker_reports_exactly_the_state_changes(
            reads in prop::collection::vec(read_result(), 0..40)
        ) {
            let mut tracker = ChangeTracker::default();
            let mut last_reported: Option<Result<Vec<u8>, io::ErrorKind>> = None;
            for read in reads {
                let event = tracker.observe(read.clone().map_err(io::Error::from));
                let expect_report = last_reported.as_ref() != Some(&read);
                match (&event, &read) {
                    (None, _) => prop_assert!(!expect_report, "missed {:?}", read),
                    (Some(FileEvent::Content(bytes)), Ok(expected)) => {
                        prop_assert!(expect_report);
                        prop_assert_eq!(&**bytes, expected.as_slice());
                    }
                    (Some(FileEvent::Unreadable(error)), Err(kind)) => {
                        prop_assert!(expect_report);
                        prop_assert_eq!(error.kind(), *kind);
                    }
                    (Some(other), _) => prop_assert!(false, "{:?} for {:?}", other, read),
                }
                if event.is_some() {
                    last_reported = Some(read);
                }
            }
        }
    }
}
