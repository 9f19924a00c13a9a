//! `pubsub --layout fan-in | fan-out`: publishers and subscribers not in
//! pairs, so a publish is delivered to every subscriber, wherever it runs.
//!
//! - fan-in: publisher N publishes on `bench/fan-in/N`; every subscriber
//!   subscribes to `bench/fan-in/+` (many publishers, few subscribers).
//! - fan-out: every publisher publishes on `bench/fan-out`; every
//!   subscriber subscribes to it (few publishers, many subscribers).
//!
//! Publishers and subscribers are spread over the workers round robin.
//! Publishing is the `pairs` machinery ([`super::pairs::publisher`]); flow
//! control is [`SharedFlow`], over the run's totals, since a publisher's
//! deliveries land on every worker.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering::Release;

use super::pairs::{publisher, receive};
use super::{Plan, Shared, WorkerCtx, WorkerOutput};
use crate::cli::{Layout, PairsArgs, PubsubArgs};
use crate::client::{ClientError, Connection};
use crate::control::Phase;
use crate::flow::SharedFlow;
use crate::report::Summary;

pub fn run(args: &PubsubArgs) -> Result<Summary, String> {
    let subscribers = args.subscribers();
    let plan = Plan {
        scenario: match args.layout {
            Layout::Pairs => "pairs",
            Layout::FanIn => "fan-in",
            Layout::FanOut => "fan-out",
        },
        subscribers: subscribers as usize,
        publishers: args.publishers as usize,
        deliveries_per_publish: u64::from(subscribers),
        params: serde_json::json!({
            "layout": args.layout,
            "publishers": args.publishers,
            "subscribers": subscribers,
            "qos": args.qos as u8,
            "payload": args.payload,
            "rate": args.rate,
            "inflight": args.inflight,
            "batch": args.batch,
            "max_lag": args.max_lag,
            "connect_concurrency": args.common.connect_concurrency,
            "persistent_subscribers": args.sessions.persistent_subscribers,
            "persistent_publishers": args.sessions.persistent_publishers,
        }),
    };
    let pairs = Arc::new(args.as_pairs());
    let layout = args.layout;
    super::run(&args.common, plan, move |index, shared| {
        worker(index, shared, pairs.clone(), layout, subscribers)
    })
}

/// Topic filter the subscribers take.
fn filter(layout: Layout) -> &'static str {
    match layout {
        Layout::FanOut => "bench/fan-out",
        _ => "bench/fan-in/+",
    }
}

/// Topic publisher `n` publishes on.
fn topic(layout: Layout, n: usize) -> String {
    match layout {
        Layout::FanOut => "bench/fan-out".to_owned(),
        _ => format!("bench/fan-in/{n}"),
    }
}

async fn worker(
    index: usize,
    shared: Arc<Shared>,
    args: Arc<PairsArgs>,
    layout: Layout,
    subscribers: u32,
) -> WorkerOutput {
    let flow = Rc::new(SharedFlow::new(
        args.max_lag,
        u64::from(args.pairs),
        u64::from(subscribers),
        shared.stats.clone(),
    ));
    let ctx = WorkerCtx::new(index, shared);
    let mut tasks: Vec<_> = (index..subscribers as usize)
        .step_by(ctx.workers())
        .map(|n| {
            monoio::spawn(subscriber(
                ctx.clone(),
                args.clone(),
                layout,
                n,
                flow.clone(),
            ))
        })
        .collect();
    tasks.extend(
        (index..args.pairs as usize)
            .step_by(ctx.workers())
            .map(|n| {
                let (ctx, args, flow) = (ctx.clone(), args.clone(), flow.clone());
                monoio::spawn(async move {
                    if ctx.reached(Phase::Connect).await {
                        let topic = topic(layout, n);
                        publisher(&ctx, &args, &topic, n, true, &*flow).await;
                    } else {
                        ctx.control().publishers_settled.fetch_add(1, Release);
                    }
                })
            }),
    );
    ctx.follow().await;
    for task in tasks {
        task.await;
    }
    ctx.output()
}

async fn subscriber(
    ctx: Rc<WorkerCtx>,
    args: Arc<PairsArgs>,
    layout: Layout,
    n: usize,
    flow: Rc<SharedFlow>,
) {
    let connected = ctx
        .or_stop(async {
            let _turn = ctx.connect_gate.acquire().await;
            let mut conn = Connection::open_session(
                &args.common.subscriber_broker(n),
                &format!("bench-{}-sub-{n}", layout_name(layout)),
                !args.sessions.persistent_subscribers,
            )
            .await?;
            conn.subscribe(filter(layout), args.qos).await?;
            Ok::<_, ClientError>(conn)
        })
        .await;
    let conn = ctx.settle_subscriber("subscriber", connected);
    if let Some(conn) = conn {
        receive(ctx, conn, flow).await;
    }
}

fn layout_name(layout: Layout) -> &'static str {
    match layout {
        Layout::Pairs => "pair",
        Layout::FanIn => "fanin",
        Layout::FanOut => "fanout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_match_filters() {
        use ringmq::protocol::topic::matches;
        for layout in [Layout::FanIn, Layout::FanOut] {
            for n in [0, 7, 999] {
                assert!(matches(filter(layout), &topic(layout, n)), "{layout:?} {n}");
            }
        }
    }
}
