//! The `stresser` report: mqtt-stresser's layout, then what it leaves out.
//!
//! Layout, bucketing and median follow inovex/mqtt-stresser's `report.go`
//! (`printSummary`, `buildHistogram`, `median`): "# Configuration",
//! "# Results", then "# Publishing Throughput" and "# Receiving Throughput",
//! each with Fastest / Slowest / Median msg/sec and a cumulative histogram
//! of per-worker rates in 10 equal-width buckets between the slowest and
//! the fastest, only non-empty buckets printed as `  < UPPER msg/sec  P%`.
//! Two differences, both deliberate: "Messages / Client" shows messages per
//! client (mqtt-stresser prints the total there), and the fastest worker
//! falls in the last bucket (mqtt-stresser puts it in an 11th, one step
//! above the fastest). After its sections come errors and timeouts per
//! phase, wall time, totals and broker CPU, which it does not print.

use std::io::Write;

use serde::Serialize;

/// How one worker (subscriber + publisher pair) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Event {
    /// Published everything and received everything.
    Completed,
    /// Subscriber or publisher could not connect.
    ConnectFailed,
    SubscribeFailed,
    /// The global timeout struck before the subscriber had everything.
    TimeoutExceeded,
    /// A connection failed mid-run (broker closed it, decode error...).
    Aborted,
    /// Never started: the global timeout struck during ramp-up.
    NotStarted,
}

/// One worker's figures.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerResult {
    pub worker: usize,
    pub event: Event,
    pub published: u64,
    pub received: u64,
    /// Publisher connected to last publish completed and DISCONNECT written.
    pub publish_seconds: Option<f64>,
    /// Publisher connected to the subscriber's last expected message.
    pub receive_seconds: Option<f64>,
    /// Publishes whose completion (PUBACK / PUBCOMP) took longer than
    /// `-timeout`; like mqtt-stresser, the worker carries on.
    pub publish_timeouts: u64,
    pub error: Option<String>,
}

impl WorkerResult {
    pub fn new(worker: usize, event: Event) -> WorkerResult {
        WorkerResult {
            worker,
            event,
            published: 0,
            received: 0,
            publish_seconds: None,
            receive_seconds: None,
            publish_timeouts: 0,
            error: None,
        }
    }

    fn publish_rate(&self) -> Option<f64> {
        rate(self.published, self.publish_seconds?)
    }

    fn receive_rate(&self) -> Option<f64> {
        rate(self.received, self.receive_seconds?)
    }
}

fn rate(messages: u64, seconds: f64) -> Option<f64> {
    (messages > 0).then(|| messages as f64 / seconds.max(1e-9))
}

/// Fastest, slowest, median and histogram of per-worker rates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Throughput {
    pub workers: usize,
    pub fastest: f64,
    pub slowest: f64,
    pub median: f64,
    /// (bucket upper bound msg/s, cumulative fraction of workers).
    pub histogram: Vec<(f64, f64)>,
}

impl Throughput {
    /// `None` when no worker has a rate.
    pub fn of(mut rates: Vec<f64>) -> Option<Throughput> {
        rates.retain(|r| r.is_finite());
        rates.sort_by(f64::total_cmp);
        Some(Throughput {
            workers: rates.len(),
            fastest: *rates.last()?,
            slowest: rates[0],
            median: median(&rates)?,
            histogram: histogram(&rates, 10),
        })
    }

    fn print(&self, out: &mut impl Write, title: &str) -> std::io::Result<()> {
        writeln!(out, "# {title}")?;
        writeln!(out, "Fastest: {:.0} msg/sec", self.fastest)?;
        writeln!(out, "Slowest: {:.0} msg/sec", self.slowest)?;
        writeln!(out, "Median: {:.0} msg/sec", self.median)?;
        writeln!(out)?;
        for (upper, fraction) in &self.histogram {
            writeln!(out, "  < {upper:.0} msg/sec  {:.0}%", fraction * 100.0)?;
        }
        Ok(())
    }
}

/// The middle of a sorted series; the mean of the two middles when even.
pub fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| (sorted[(n - 1) / 2] + sorted[n / 2]) / 2.0)
}

/// Cumulative histogram of a sorted series over `buckets` equal-width
/// buckets from its minimum to its maximum; empty buckets are left out.
/// When every value is equal there is one bucket, bounded by that value.
pub fn histogram(sorted: &[f64], buckets: usize) -> Vec<(f64, f64)> {
    let (Some(&low), Some(&high)) = (sorted.first(), sorted.last()) else {
        return Vec::new();
    };
    let step = (high - low) / buckets as f64;
    let mut counts = vec![0u64; buckets.max(1)];
    for &v in sorted {
        let index = if step > 0.0 {
            (((v - low) / step).floor() as usize).min(counts.len() - 1)
        } else {
            0
        };
        counts[index] += 1;
    }
    let total = sorted.len() as f64;
    let mut cumulative = 0;
    counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, count)| {
            cumulative += count;
            let upper = if step > 0.0 {
                low + step * (index + 1) as f64
            } else {
                low
            };
            (upper, cumulative as f64 / total)
        })
        .collect()
}

/// Errors and timeouts counted per phase of a worker's life.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct PhaseCounts {
    /// Subscriber connect + subscribe, publisher connect.
    pub setup_errors: u64,
    pub setup_timeouts: u64,
    pub publish_errors: u64,
    /// Publishes not completed within `-timeout`.
    pub publish_timeouts: u64,
    pub receive_errors: u64,
    /// Workers whose subscriber did not have everything by the global timeout.
    pub receive_timeouts: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StresserReport {
    pub broker: String,
    pub clients: u64,
    pub messages_per_client: u64,
    pub publisher_qos: u8,
    pub subscriber_qos: u8,
    pub published: u64,
    pub received: u64,
    pub expected: u64,
    pub completed: u64,
    /// Workers that ended in anything but `Completed`.
    pub errors: u64,
    /// Workers by how they ended, errors only.
    pub by_event: std::collections::BTreeMap<String, u64>,
    pub phases: PhaseCounts,
    pub publishing: Option<Throughput>,
    pub receiving: Option<Throughput>,
    /// First worker started to last worker finished.
    pub wall_seconds: f64,
    /// Messages received over wall time.
    pub aggregate_per_second: f64,
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_us_per_message: Option<f64>,
    /// The first few error messages, for diagnosis.
    pub error_samples: Vec<String>,
}

/// What the run knows besides the workers' results.
pub struct RunFacts {
    pub broker: String,
    pub clients: u64,
    pub messages_per_client: u64,
    pub publisher_qos: u8,
    pub subscriber_qos: u8,
    pub wall_seconds: f64,
    pub broker_cpu_seconds: Option<f64>,
}

impl StresserReport {
    pub fn new(facts: RunFacts, workers: Vec<WorkerResult>) -> StresserReport {
        let count = |event: Event| workers.iter().filter(|w| w.event == event).count() as u64;
        let published = workers.iter().map(|w| w.published).sum();
        let received: u64 = workers.iter().map(|w| w.received).sum();
        let mut phases = PhaseCounts::default();
        for w in &workers {
            phases.publish_timeouts += w.publish_timeouts;
            match w.event {
                Event::ConnectFailed | Event::SubscribeFailed => match &w.error {
                    Some(e) if e.contains("timed out") => phases.setup_timeouts += 1,
                    _ => phases.setup_errors += 1,
                },
                Event::TimeoutExceeded => phases.receive_timeouts += 1,
                Event::Aborted if w.publish_seconds.is_none() => phases.publish_errors += 1,
                Event::Aborted => phases.receive_errors += 1,
                Event::Completed | Event::NotStarted => {}
            }
        }
        let events = [
            Event::ConnectFailed,
            Event::SubscribeFailed,
            Event::TimeoutExceeded,
            Event::Aborted,
            Event::NotStarted,
        ];
        let broker_cpu_us_per_message = facts
            .broker_cpu_seconds
            .and_then(|cpu| (received > 0).then(|| cpu * 1e6 / received as f64));
        StresserReport {
            broker: facts.broker,
            clients: facts.clients,
            messages_per_client: facts.messages_per_client,
            publisher_qos: facts.publisher_qos,
            subscriber_qos: facts.subscriber_qos,
            published,
            received,
            expected: facts.clients * facts.messages_per_client,
            completed: count(Event::Completed),
            errors: workers
                .iter()
                .filter(|w| w.event != Event::Completed)
                .count() as u64,
            by_event: events
                .iter()
                .map(|&e| (format!("{e:?}"), count(e)))
                .collect(),
            phases,
            publishing: Throughput::of(workers.iter().filter_map(|w| w.publish_rate()).collect()),
            receiving: Throughput::of(workers.iter().filter_map(|w| w.receive_rate()).collect()),
            wall_seconds: facts.wall_seconds,
            aggregate_per_second: received as f64 / facts.wall_seconds.max(1e-9),
            broker_cpu_seconds: facts.broker_cpu_seconds,
            broker_cpu_us_per_message,
            error_samples: workers
                .iter()
                .filter_map(|w| w.error.clone())
                .take(5)
                .collect(),
        }
    }

    pub fn print_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        let percent = |part: u64, whole: u64| part as f64 * 100.0 / whole.max(1) as f64;
        writeln!(out)?;
        writeln!(out, "# Configuration")?;
        writeln!(out, "Concurrent Clients: {}", self.clients)?;
        writeln!(out, "Messages / Client:  {}", self.messages_per_client)?;
        writeln!(out)?;
        writeln!(out, "# Results")?;
        writeln!(
            out,
            "Published Messages: {} ({:.0}%)",
            self.published,
            percent(self.published, self.expected)
        )?;
        writeln!(
            out,
            "Received Messages:  {} ({:.0}%)",
            self.received,
            percent(self.received, self.published)
        )?;
        writeln!(
            out,
            "Completed:          {} ({:.0}%)",
            self.completed,
            percent(self.completed, self.clients)
        )?;
        writeln!(
            out,
            "Errors:             {} ({:.0}%)",
            self.errors,
            percent(self.errors, self.clients)
        )?;
        if self.errors > 0 {
            let events = [
                "ConnectFailed",
                "SubscribeFailed",
                "TimeoutExceeded",
                "Aborted",
                "NotStarted",
            ];
            for event in events {
                let count = self.by_event.get(event).unwrap_or(&0);
                if event == "NotStarted" && *count == 0 {
                    continue;
                }
                let name = format!("{event}:");
                writeln!(
                    out,
                    "- {name:<19} {count} ({:.0}%)",
                    percent(*count, self.errors)
                )?;
            }
        }
        for (title, throughput) in [
            ("Publishing Throughput", &self.publishing),
            ("Receiving Throughput", &self.receiving),
        ] {
            writeln!(out)?;
            match throughput {
                Some(t) => t.print(out, title)?,
                None => writeln!(out, "# {title}\nno worker got this far")?,
            }
        }
        let p = &self.phases;
        writeln!(out)?;
        writeln!(out, "# Errors and timeouts by phase")?;
        writeln!(
            out,
            "Setup:   {} errors, {} timeouts",
            p.setup_errors, p.setup_timeouts
        )?;
        writeln!(
            out,
            "Publish: {} errors, {} timeouts",
            p.publish_errors, p.publish_timeouts
        )?;
        writeln!(
            out,
            "Receive: {} errors, {} timeouts",
            p.receive_errors, p.receive_timeouts
        )?;
        for sample in &self.error_samples {
            writeln!(out, "  e.g. {sample}")?;
        }
        writeln!(out)?;
        writeln!(out, "# Totals")?;
        writeln!(out, "Wall time:          {:.3} s", self.wall_seconds)?;
        writeln!(
            out,
            "Messages received:  {} of {} expected ({:.1}%)",
            self.received,
            self.expected,
            percent(self.received, self.expected)
        )?;
        writeln!(
            out,
            "Aggregate:          {:.0} msg/sec",
            self.aggregate_per_second
        )?;
        if let Some(cpu) = self.broker_cpu_seconds {
            writeln!(
                out,
                "Broker CPU:         {cpu:.2} s, {} per received message",
                self.broker_cpu_us_per_message
                    .map_or("n/a".to_owned(), |us| format!("{us:.2} us"))
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_series() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(median(&[1.0, 2.0, 4.0, 10.0]), Some(3.0));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_skip_empty_ones() {
        let series = [100.0, 110.0, 120.0, 150.0, 200.0];
        let h = histogram(&series, 10);
        // Step 10: 100 and 110 fall in buckets 0 and 1, 120 in 2, 150 in 5,
        // 200 (the fastest) in the last.
        let uppers: Vec<f64> = h.iter().map(|(u, _)| u.round()).collect();
        assert_eq!(uppers, [110.0, 120.0, 130.0, 160.0, 200.0]);
        let fractions: Vec<f64> = h.iter().map(|(_, f)| *f).collect();
        assert_eq!(fractions, [0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(histogram(&[5.0, 5.0], 10), [(5.0, 1.0)]);
        assert!(histogram(&[], 10).is_empty());
    }

    #[test]
    fn throughput_sorts_and_summarises() {
        let t = Throughput::of(vec![300.0, 100.0, 200.0]).expect("rates");
        assert_eq!((t.fastest, t.slowest, t.median), (300.0, 100.0, 200.0));
        assert_eq!(t.histogram.last(), Some(&(300.0, 1.0)));
        assert!(Throughput::of(Vec::new()).is_none());
    }

    fn completed(worker: usize, publish_seconds: f64, receive_seconds: f64) -> WorkerResult {
        WorkerResult {
            published: 100,
            received: 100,
            publish_seconds: Some(publish_seconds),
            receive_seconds: Some(receive_seconds),
            ..WorkerResult::new(worker, Event::Completed)
        }
    }

    #[test]
    fn report_has_mqtt_stresser_layout() {
        let mut timed_out = completed(2, 1.0, 1.0);
        timed_out.event = Event::TimeoutExceeded;
        timed_out.received = 40;
        timed_out.receive_seconds = None;
        let report = StresserReport::new(
            RunFacts {
                broker: "127.0.0.1:1883".into(),
                clients: 3,
                messages_per_client: 100,
                publisher_qos: 1,
                subscriber_qos: 1,
                wall_seconds: 2.0,
                broker_cpu_seconds: Some(0.024),
            },
            vec![completed(0, 0.5, 1.0), completed(1, 1.0, 2.0), timed_out],
        );
        assert_eq!((report.published, report.received), (300, 240));
        assert_eq!((report.completed, report.errors), (2, 1));
        assert_eq!(report.phases.receive_timeouts, 1);
        let mut out = Vec::new();
        report.print_text(&mut out).expect("print");
        let text = String::from_utf8(out).expect("utf-8");
        let expected_lines = [
            "# Configuration",
            "Concurrent Clients: 3",
            "Messages / Client:  100",
            "# Results",
            "Published Messages: 300 (100%)",
            "Received Messages:  240 (80%)",
            "Completed:          2 (67%)",
            "Errors:             1 (33%)",
            "- TimeoutExceeded:    1 (100%)",
            "# Publishing Throughput",
            "Fastest: 200 msg/sec",
            "Slowest: 100 msg/sec",
            "Median: 100 msg/sec",
            "  < 200 msg/sec  100%",
            "# Receiving Throughput",
            "Fastest: 100 msg/sec",
            "Median: 75 msg/sec",
            "Receive: 0 errors, 1 timeouts",
            "Messages received:  240 of 300 expected (80.0%)",
            "Aggregate:          120 msg/sec",
            "Broker CPU:         0.02 s, 100.00 us per received message",
        ];
        for line in expected_lines {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in\n{text}"
            );
        }
    }
}
