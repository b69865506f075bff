//! fork(): the child gets an empty, working dispatcher; the parent keeps its entries.
//!
//! Kept in its own test binary, its tests serialised: forking a process whose other test
//! threads hold locks would make the child's behaviour depend on them.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::Recorder;
use dispatcher_core::{Dispatcher, Options};

/// The tests here fork; they run one at a time, so that no other test thread is inside
/// malloc (or anything else) at a fork that does not protect libc.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_fork_child_gets_an_empty_working_dispatcher() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rec = Recorder::new();
    let d = Dispatcher::builder(Duration::from_secs(3600))
        .options(Options {
            max_queue_entries: 1_000_000,
            ..Options::default()
        })
        .build(rec.ok())
        .unwrap();
    let stop = AtomicBool::new(false);
    let pause = AtomicBool::new(false);
    let paused = std::sync::atomic::AtomicUsize::new(0);
    /// Stops the producers even when a failed check unwinds out of the scope (which would
    /// otherwise wait for them forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let parent_accepted = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        // Producers keep enqueueing (and holding shard locks) while the main thread forks.
        let producers: Vec<_> = (0..2u8)
            .map(|t| {
                let (d, stop, pause, paused) = (&d, &stop, &pause, &paused);
                s.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if pause.load(Ordering::SeqCst) {
                            paused.fetch_add(1, Ordering::SeqCst);
                            while pause.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
                                std::thread::yield_now();
                            }
                            paused.fetch_sub(1, Ordering::SeqCst);
                        }
                        // The queue may fill up (bounded below); count what was accepted.
                        n += u64::from(d.enqueue(&[b'p', t]).is_ok());
                    }
                    n
                })
            })
            .collect();
        common::wait_until("the producers to start", || d.stats().enqueued > 1000);
        for round in 0..4 {
            // Every other child comes from a raw fork syscall, which runs no atfork handler
            // (as some forking code does): the wipe-on-fork page alone must reveal it. Such a
            // fork does not protect libc either (a producer inside malloc would leave its
            // lock held in the child), so the producers pause for it.
            let raw = round % 2 == 1;
            if raw {
                pause.store(true, Ordering::SeqCst);
                common::wait_until("the producers to pause", || {
                    paused.load(Ordering::SeqCst) == 2
                });
            }
            // SAFETY: the child only runs the code below and leaves with `_exit`.
            let pid = unsafe {
                if raw {
                    libc::syscall(libc::SYS_fork) as libc::pid_t
                } else {
                    libc::fork()
                }
            };
            if raw && pid != 0 {
                pause.store(false, Ordering::SeqCst);
            }
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                // SAFETY: leaving the child without running the parent's destructors or hooks.
                unsafe { libc::_exit(child(&d, &rec)) };
            }
            let status = wait_child(pid);
            assert!(
                libc::WIFEXITED(status),
                "the child crashed: status {status}"
            );
            assert_eq!(
                libc::WEXITSTATUS(status),
                0,
                "the child failed (exit code = failed check)"
            );
        }
        stop.store(true, Ordering::Relaxed);
        producers
            .into_iter()
            .map(|p| p.join().unwrap())
            .sum::<u64>()
    });
    d.flush(None).unwrap();
    assert_eq!(rec.delivered().len() as u64, parent_accepted);
    assert!(
        rec.delivered().iter().all(|e| e[0] == b'p'),
        "the parent got a child's entry"
    );
}

/// Waits (bounded) for a child; kills it and fails the test if it hangs.
fn wait_child(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    let hung = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        common::wait_until("the fork child to exit", || {
            // SAFETY: polling our own child.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == pid }
        })
    }));
    if hung.is_err() {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
        panic!("the fork child hung");
    }
    status
}

/// Runs in the child; returns the exit code (the number of the failed check, or 0).
fn child(d: &Dispatcher, rec: &Recorder) -> i32 {
    let inherited = rec.delivered().len();
    let s = d.stats();
    if s.enqueued != 0 || s.queued_entries != 0 {
        return 1; // the child's dispatcher must start empty
    }
    for i in 0..100u8 {
        if d.enqueue(&[b'c', i]).is_err() {
            return 2;
        }
    }
    if d.flush(Some(Duration::from_secs(20))).is_err() {
        return 3;
    }
    let delivered = rec.delivered();
    let mine: Vec<_> = delivered[inherited..].to_vec();
    if mine.len() != 100 || mine.iter().enumerate().any(|(i, e)| e != &[b'c', i as u8]) {
        return 4; // exactly the child's own entries, in order
    }
    if d.shutdown(Some(Duration::from_secs(20))).is_err() || d.stats().dispatched != 100 {
        return 5;
    }
    0
}

/// Set by the drop of the dispatch closure below (in whichever process drops it).
static CALLBACKS_FREED: AtomicBool = AtomicBool::new(false);

struct FreedFlag;
impl Drop for FreedFlag {
    fn drop(&mut self) {
        CALLBACKS_FREED.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_fork_child_frees_its_copy_and_a_fork_inside_the_callback_stays_in_the_parent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Part 1: the child's copy of the worker's reference must not keep the engine alive.
    let flag = FreedFlag;
    let d = Dispatcher::builder(Duration::from_secs(3600))
        .build(move |_| {
            let _keep = &flag;
            Ok(())
        })
        .unwrap();
    d.enqueue(b"parent").unwrap();
    // SAFETY: the child runs the block below and leaves with `_exit`.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        drop(d);
        let code = if CALLBACKS_FREED.load(Ordering::SeqCst) {
            0
        } else {
            7
        };
        // SAFETY: leaving the child.
        unsafe { libc::_exit(code) };
    }
    let status = wait_child(pid);
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child never freed its dispatcher's callbacks"
    );
    assert!(!CALLBACKS_FREED.load(Ordering::SeqCst));
    drop(d);
    assert!(CALLBACKS_FREED.load(Ordering::SeqCst));

    // Part 2: a callback that forks. The child's copy of the worker returns from the callback
    // and must stop there, not go on delivering the parent's queue.
    let mut fds = [0; 2];
    // SAFETY: a pipe for the child to report dispatches it should not make.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let parent = std::process::id();
    let rec = Recorder::new();
    let r = rec.clone();
    let forked = std::sync::Arc::new(AtomicBool::new(false));
    let f = forked.clone();
    let d = Dispatcher::builder(Duration::from_millis(1))
        .options(Options {
            max_batch_entries: 1,
            ..Options::default()
        })
        .build(move |batch| {
            if std::process::id() != parent {
                // SAFETY: writing one byte to our pipe.
                unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) };
                return Ok(());
            }
            r.record(batch);
            if !f.swap(true, Ordering::SeqCst) {
                // SAFETY: the child returns from this callback into the library, which must stop.
                let child = unsafe { libc::fork() };
                assert!(child >= 0);
                if child > 0 {
                    let status = wait_child(child);
                    assert!(libc::WIFEXITED(status), "the child crashed: {status}");
                }
            }
            Ok(())
        })
        .unwrap();
    for i in 0..20u8 {
        d.enqueue(&[i]).unwrap();
    }
    d.shutdown(None).unwrap();
    assert_eq!(rec.delivered().len(), 20, "the parent delivers everything");
    let mut buf = [0u8; 16];
    // SAFETY: closing our write end, then reading what the child wrote (nothing, we hope).
    let n = unsafe {
        libc::close(fds[1]);
        libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len())
    };
    assert_eq!(
        n, 0,
        "the child's copy of the worker went on dispatching the parent's entries"
    );
}
