//! Everything that crosses one test's broker, as an eavesdropper with the broker's
//! trace (RabbitMQ's firehose) would see it: every message published into the vhost
//! (commands, replies through direct reply-to, reports, events) with its headers.

use std::sync::mpsc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::types::{AMQPValue, FieldTable};
use tandem_testkit::Broker;
use tokio_util::sync::CancellationToken;

use crate::hostile::Hostile;

/// One message as the trace saw it.
#[derive(Debug, Clone)]
pub struct Traced {
    /// `publish.<exchange>` or `deliver.<queue>`.
    pub routing_key: String,
    /// The trace's headers (the original routing keys and properties among them), every
    /// name and value's bytes one after the other.
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
}

impl Traced {
    /// Whether `needle` shows in the body or the headers.
    pub fn shows(&self, needle: &str) -> bool {
        let n = needle.as_bytes();
        let within = |hay: &[u8]| hay.windows(n.len()).any(|w| w == n);
        within(&self.body) || within(&self.headers)
    }
}

/// Every name and value in `table`, nested ones too, as bytes.
fn flatten(table: &FieldTable) -> Vec<u8> {
    fn value(v: &AMQPValue, out: &mut Vec<u8>) {
        match v {
            AMQPValue::LongString(s) => out.extend_from_slice(s.as_bytes()),
            AMQPValue::ShortString(s) => out.extend_from_slice(s.as_str().as_bytes()),
            AMQPValue::FieldTable(t) => out.extend(flatten(t)),
            AMQPValue::FieldArray(a) => a.as_slice().iter().for_each(|v| value(v, out)),
            AMQPValue::ByteArray(b) => out.extend_from_slice(b.as_slice()),
            other => out.extend_from_slice(format!("{other:?}").as_bytes()),
        }
        out.push(b' ');
    }
    let mut out = Vec::new();
    for (k, v) in table.inner() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.push(b'=');
        value(v, &mut out);
    }
    out
}

pub struct Capture {
    vhost: String,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<Vec<Traced>>,
}

fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Capture {
    /// Turns the trace on for `broker`'s vhost and starts recording; returns once the
    /// recorder is bound (nothing published after that is missed).
    pub fn start(broker: &Broker) -> anyhow::Result<Capture> {
        rabbitmqctl(&["trace_on", "-p", broker.vhost()])?;
        let uri = broker.uri().to_owned();
        let stop = CancellationToken::new();
        let (ready_tx, ready) = mpsc::channel();
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // The broker's trace exchange, as any client of the vhost may read it.
                let hostile = Hostile::connect(&uri).await.unwrap();
                let mut consumer = hostile.tap("amq.rabbitmq.trace", "#").await.unwrap();
                ready_tx.send(()).unwrap();
                let mut seen = Vec::new();
                loop {
                    tokio::select! {
                        _ = stopped.cancelled() => break,
                        next = consumer.next() => match next {
                            Some(Ok(d)) => seen.push(Traced {
                                routing_key: d.routing_key.to_string(),
                                headers: d
                                    .properties
                                    .headers()
                                    .as_ref()
                                    .map(flatten)
                                    .unwrap_or_default(),
                                body: d.data,
                            }),
                            _ => break,
                        },
                    }
                }
                seen
            })
        });
        ready
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| anyhow::anyhow!("the trace recorder did not start"))?;
        Ok(Capture {
            vhost: broker.vhost().to_owned(),
            stop,
            thread,
        })
    }

    /// Stops recording (after a moment for what is in flight) and returns what was seen.
    pub fn finish(self) -> Vec<Traced> {
        std::thread::sleep(Duration::from_millis(500));
        let _ = rabbitmqctl(&["trace_off", "-p", &self.vhost]);
        self.stop.cancel();
        self.thread.join().expect("the trace recorder")
    }
}
