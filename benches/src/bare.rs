//! Connections a raw baseline takes and hands back by hand, without sqlx's
//! pool in the way.
//!
//! sqlx's pool pings every connection handed back to it (`Sync`, then a wait
//! for `ReadyForQuery` on Postgres; `COM_PING` on MySQL), on a task of its
//! own, after the caller has its answer. That is one more round trip than a
//! lock needs, so a raw figure through the pool is not the store's least
//! work: at 64 tasks the server answers three messages per pair instead of
//! two, and in an interleaved latency loop the ping of one sample's raw pair
//! runs during the next sample's library pair, which is charged for it.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use leasehold_postgres::sqlx::{self, ConnectOptions, Connection, Database};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stores::err;

/// Connections opened with a pool's connect options, at most as many at a
/// time as that pool's `max_connections` (so a raw loop runs with the
/// library's concurrency), kept between calls and never pinged.
pub struct Bare<DB: Database> {
    options: Arc<<DB::Connection as Connection>::Options>,
    idle: Arc<Mutex<Vec<DB::Connection>>>,
    room: Arc<Semaphore>,
}

impl<DB: Database> Clone for Bare<DB> {
    fn clone(&self) -> Self {
        Bare {
            options: self.options.clone(),
            idle: self.idle.clone(),
            room: self.room.clone(),
        }
    }
}

/// A connection taken from [`Bare`]: hand it back with [`Bare::give_back`]
/// after a call that succeeded; dropped, it is closed.
pub struct Taken<DB: Database> {
    conn: DB::Connection,
    _room: OwnedSemaphorePermit,
}

impl<DB: Database> Deref for Taken<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.conn
    }
}

impl<DB: Database> DerefMut for Taken<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }
}

impl<DB: Database> Bare<DB> {
    /// With `pool`'s connect options and connection limit. Takes nothing
    /// from the pool.
    pub fn of(pool: &sqlx::Pool<DB>) -> Self {
        let limit = pool.options().get_max_connections() as usize;
        Bare {
            options: pool.connect_options(),
            idle: Arc::default(),
            room: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// An idle connection, or a new one once there is room for it.
    pub async fn take(&self) -> Result<Taken<DB>, String> {
        let room = self.room.clone().acquire_owned().await.map_err(err)?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.options.connect().await.map_err(err)?,
        };
        Ok(Taken { conn, _room: room })
    }

    /// Keeps `taken` for the next [`Bare::take`].
    pub fn give_back(&self, taken: Taken<DB>) {
        let Taken { conn, _room } = taken;
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}
