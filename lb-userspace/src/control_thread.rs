//! The thread that runs the daemon's own network clients and servers, apart from the workers:
//! the admin endpoint, health checks, the ACME client and the etcd watch. They read what other
//! hosts send, so after `--user` they must not run where capabilities are kept: the main
//! thread keeps CAP_NET_BIND_SERVICE (to bind a reload's new listeners), this thread keeps
//! none. It is started before the privilege drop, whose `setuid` clears the capabilities of
//! every thread that did not ask to keep them, as it does the workers'.
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub const THREAD_NAME: &str = "edgelb-control";
/// How long the exit waits for a blocking call of these tasks.
const SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

pub struct ControlThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ControlThread {
    pub fn start() -> std::io::Result<ControlThread> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
                // Its tasks end here; a blocking call that does not return (a state directory
                // on a hung network file system) must not hold up the exit.
                runtime.shutdown_timeout(SHUTDOWN);
            })?;
        Ok(ControlThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
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
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
