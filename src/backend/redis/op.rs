//! One request to one server: a command (with the script source to load if the server
//! lacks it), sent as is or after `ASKING`.

use redis::aio::MultiplexedConnection;
use redis::{Cmd, RedisError, RedisResult, Value};

/// One request: a command, and for a script the source to load if the server does not
/// know it yet (it restarted, or its scripts were flushed).
pub struct Op {
    pub cmd: Cmd,
    pub script: Option<&'static str>,
}

impl Op {
    pub fn new(cmd: Cmd) -> Op {
        Op { cmd, script: None }
    }
}

/// Sends `op` on `c`, after `ASKING` in the same write when a cluster redirected it
/// there for the time of a slot's migration.
pub(crate) async fn send(
    c: &mut MultiplexedConnection,
    op: &Op,
    asking: bool,
) -> RedisResult<Value> {
    let once = async |c: &mut MultiplexedConnection| -> RedisResult<Value> {
        if asking {
            let mut pipe = redis::pipe();
            pipe.cmd("ASKING").ignore().add_command(op.cmd.clone());
            let (v,): (Value,) = pipe.query_async(c).await?;
            Ok(v)
        } else {
            op.cmd.query_async(c).await
        }
    };
    match (once(c).await, op.script) {
        (Err(e), Some(source))
            if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(source)
                .query_async::<()>(c)
                .await?;
            once(c).await
        }
        (reply, _) => reply,
    }
}

/// Whether `e` says that the server is a replica now (a master demoted by a failover).
pub(crate) fn is_read_only(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}
