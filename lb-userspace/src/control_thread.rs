//! The thread that runs the daemon's own network clients and servers, apart from the workers:
//! the admin endpoint, health checks, the ACME client and the etcd watch. They read what other
//! hosts send, so after `--user` they must not run where capabilities are kept: the main
//! thread keeps CAP_NET_BIND_SERVICE (to bind a reload's new listeners), this thread keeps
//! none. It is started before the privilege drop, whose `setuid` clears the capabilities of
//! every thread that did not ask to keep them, as it does the workers'; its tasks are started
//! after it (`Node::start_tasks`).
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub const THREAD_NAME: &str = "edgelb-control";
/// How long the exit waits for the thread to end. A task stuck in a blocking call (a state
/// directory on a hung network file system) must not hold the daemon up for ever: past it,
/// the thread is left to the process's exit.
const SHUTDOWN: Duration = Duration::from_secs(2);

pub struct ControlThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    ended: mpsc::Receiver<()>,
}

impl ControlThread {
    pub fn start() -> std::io::Result<ControlThread> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, handle) = mpsc::channel();
        let (end, ended) = mpsc::channel();
        // The runtime is made and dropped on the thread itself: dropped anywhere else (in
        // the main runtime, if the thread could not start) it would panic.
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(SHUTDOWN);
                let _ = end.send(());
            })?;
        let handle = handle
            .recv()
            .map_err(|_| std::io::Error::other("the control thread ended at once"))??;
        Ok(ControlThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            ended,
        })
    }

    /// Where its tasks are spawned.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for ControlThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Joined only once it has said it is done; otherwise left behind (see SHUTDOWN).
        if self.ended.recv_timeout(SHUTDOWN * 2).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}
