//! `GET /experiments/{id}/curve`: the loss curve as server-sent events.
//!
//! First the stored events after `Last-Event-ID` (all of them on a first connection), then
//! live ones as any worker, in any process, records them: `status` and `epoch` events
//! carry the durable id of their row in `experiment_events`, so a reconnect continues
//! without gaps or repeats. `progress` events within an epoch are ephemeral; their id is
//! `<last durable id>.<n>`, which resumes at the same place. When the experiment has
//! ended, an `end` event carries its final state and the stream closes.
//!
//! Notifications only say "look again": the stream re-reads the table after the last id
//! it sent, so a lost or reordered notification cannot make it skip an event.
//!
//! Payloads: `status` is `{status, error}`; `epoch` is the row `/metrics` lists for that
//! epoch, with `recorded_at` (when it was stored, moments before its commit); `progress`
//! is `{epoch, epochs, batch, batches, loss, at}`, `at` being when that batch finished
//! (the worker's clock); `end` is the experiment, `training_started_at` included. The
//! timestamps let a client see where time goes: in the queue (`created_at` to
//! `training_started_at`), training, evaluating and storing (a last batch's `at` to its
//! epoch's `recorded_at`), and on the way to it (`recorded_at` to arrival).

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

use super::auth::Caller;
use super::experiments::ExperimentView;
use super::input::path_id;
use super::{AppState, error::ApiError};
use crate::store::listen::Signal;
use crate::store::{Status, Store, StoreError, events};

pub fn router() -> Router<AppState> {
    Router::new().route("/experiments/{id}/curve", get(curve))
}

/// The durable id of a `Last-Event-ID` (`N`, or `N.M` for a progress event), 0 when
/// absent. Anything else is a 400: replaying from the start instead would hand the
/// client everything again as if it were new.
fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(0);
    };
    let bad = || {
        ApiError::BadRequest(
            "Last-Event-ID is not an event id of this stream (N or N.M, as its events carry)"
                .into(),
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    let (durable, progress) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(durable) || !digits(progress) {
        return Err(bad());
    }
    durable.parse().map_err(|_| bad())
}

/// One server-sent event of the curve, as the OpenAPI document describes the stream's
/// items (what `text/event-stream` carries: an event name, an id and a data line).
#[derive(utoipa::ToSchema)]
pub struct CurveEvent {
    /// `status`, `epoch`, `progress` or `end`.
    #[schema(pattern = "^(status|epoch|progress|end)$")]
    pub event: String,
    /// The durable event id (`progress`: `<last durable id>.<n>`); send it back as
    /// `Last-Event-ID` to resume.
    #[schema(pattern = "^[0-9]+(\\.[0-9]+)?$")]
    pub id: String,
    /// The event's JSON payload (see the operation's description).
    #[schema(content_media_type = "application/json")]
    pub data: String,
}

/// Follow an experiment's curve.
#[utoipa::path(get, path = "/experiments/{id}/curve", tag = "experiments",
    params(
        ("id" = uuid::Uuid, Path, description = "Experiment id"),
        ("Last-Event-ID" = Option<String>, Header, pattern = "^[0-9]{1,18}(\\.[0-9]{1,18})?$", description = "Resume after this event (the id of an event this stream sent)"),
    ),
    responses(
        (status = 200, description = "Events `status` (`{status, error}`), `epoch` (a `/metrics` row, with `recorded_at`), `progress` (`{epoch, epochs, batch, batches, loss, at}`, `at` when the batch finished), then `end` (the experiment)", content_type = "text/event-stream", body = CurveEvent),
        (status = 400, description = "`Last-Event-ID` is not an id this stream sends", body = super::error::Problem, content_type = "application/problem+json"),
        (status = 404, body = super::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many curve streams are open (`--max-sse-streams`); retry after `Retry-After` seconds", body = super::error::Problem, content_type = "application/problem+json"),
    ))]
async fn curve(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = path_id(id)?;
    let after = last_event_id(&headers)?;
    // Each stream holds a permit until its follower ends (the client left, the experiment
    // ended, or shutdown): memory and database work stay bounded however many connect.
    let permit = state.sse_streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::Unavailable(format!(
            "{} curve streams are open, the most this server keeps; retry later",
            state.max_sse_streams
        ))
    })?;
    // Subscribe before the first read so that nothing falls between them.
    let signals = state.hub.subscribe();
    state.store.experiment_in(caller.scope(), id).await?;
    // An id past this experiment's newest event (another experiment's, or made up) means
    // "seen everything": continue from the real newest, so the ids sent are its own.
    let after = after.min(state.store.last_event_id(id).await?);
    let (tx, rx) = mpsc::channel(64);
    let mut shutdown = state.shutdown.clone();
    let follower = follow(state.store.clone(), id, after, signals, tx);
    tokio::spawn(async move {
        let _permit = permit;
        tokio::select! {
            _ = follower => {}
            _ = crate::shutdown::stopped(&mut shutdown) => {}
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

async fn follow(
    store: Store,
    id: Uuid,
    mut last: i64,
    mut signals: broadcast::Receiver<Signal>,
    tx: Tx,
) {
    let mut progress_n = 0u64;
    let mut first = true;
    loop {
        match replay(&store, id, &mut last, &tx, std::mem::take(&mut first)).await {
            Ok(Replayed::Following) => {}
            Ok(Replayed::Ended) | Err(Closed::ClientGone) => return,
            // Deleted while followed: nothing more will come.
            Err(Closed::Store(StoreError::NotFound)) => return,
            Err(Closed::Store(e)) => {
                // The client reconnects with Last-Event-ID and misses nothing.
                tracing::warn!(%id, error = %e, "curve: reading the experiment's events failed");
                return;
            }
        }
        // Wait for something about this experiment.
        loop {
            let signal = tokio::select! {
                s = signals.recv() => s,
                _ = tx.closed() => return,
            };
            match signal {
                Ok(Signal::Event { experiment, .. }) if experiment == id => break,
                Ok(Signal::Progress { experiment, data }) if experiment == id => {
                    progress_n += 1;
                    let mut d = (*data).clone();
                    if let Some(o) = d.as_object_mut() {
                        o.remove("experiment_id");
                    }
                    let ev = Event::default()
                        .event("progress")
                        .id(format!("{last}.{progress_n}"))
                        .json_data(d)
                        .expect("json");
                    if tx.send(Ok(ev)).await.is_err() {
                        return;
                    }
                }
                Ok(Signal::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Where a replay left the stream.
#[derive(Debug)]
enum Replayed {
    /// Everything stored was sent; the experiment goes on, so the stream waits.
    Following,
    /// The experiment has ended and the `end` event went out.
    Ended,
}

/// Why a stream closes before its `end` event.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("the client is gone")]
    ClientGone,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Sends stored events after `last`, then says whether the experiment has ended (and
/// its `end` event went out).
///
/// Whether it ended is read from the experiment on the `first` replay and after a
/// terminal `status` event only: every ending appends one in its own transaction, so
/// an `epoch` (the common wake-up) costs one query, not two, before it goes out.
async fn replay(
    store: &Store,
    id: Uuid,
    last: &mut i64,
    tx: &Tx,
    first: bool,
) -> Result<Replayed, Closed> {
    let mut ended = first;
    loop {
        let batch = store.events_after(id, *last, 500).await?;
        let n = batch.len();
        for e in batch {
            *last = e.id;
            ended |= e.kind == "status"
                && e.data["status"]
                    .as_str()
                    .and_then(Status::parse)
                    .is_some_and(Status::is_terminal);
            if tx.send(Ok(to_sse(&e))).await.is_err() {
                return Err(Closed::ClientGone);
            }
        }
        if n < 500 {
            break;
        }
    }
    if !ended {
        return Ok(Replayed::Following);
    }
    let exp = store.experiment(id).await?;
    if exp.status.is_terminal() {
        // Events of the ending are written in the same transaction as the status, so
        // everything up to the end has been sent.
        let more = store.events_after(id, *last, 1).await?;
        if more.is_empty() {
            let ev = Event::default()
                .event("end")
                .id(last.to_string())
                .json_data(ExperimentView::new(exp, false))
                .expect("json");
            let _ = tx.send(Ok(ev)).await;
            return Ok(Replayed::Ended);
        }
        return Box::pin(replay(store, id, last, tx, true)).await;
    }
    Ok(Replayed::Following)
}

fn to_sse(e: &events::Event) -> Event {
    Event::default()
        .event(e.kind.as_str())
        .id(e.id.to_string())
        .json_data(&e.data)
        .expect("json")
}
