//! rumqttc clients (MQTT 3.1.1 and 5.0) with an event-collecting task.
//!
//! The event loop runs on its own task and forwards every event into a
//! channel; it stops at the first connection error instead of reconnecting,
//! so a test sees exactly one connection's life.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::RECV_TIMEOUT;

fn elapsed_msg(what: &str) -> String {
    format!("timed out after {RECV_TIMEOUT:?} waiting for {what}")
}

/// What the 3.1.1 and 5.0 clients share, written once: rumqttc's two
/// modules have same-shaped but distinct types (`Event`, `Packet`, `QoS`,
/// `MqttOptions`), so this expands in each module against its own imports.
macro_rules! rumqttc_client {
    () => {
        pub struct Client {
            pub client: AsyncClient,
            events: mpsc::UnboundedReceiver<Result<Event, String>>,
            task: JoinHandle<()>,
        }

        pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
            let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(30));
            o
        }

        impl Client {
            /// Starts the event loop on its own task; the CONNACK is the
            /// first thing `next_event` will see.
            fn start(opts: MqttOptions) -> Client {
                let (client, mut eventloop) = AsyncClient::new(opts, 1000);
                let (tx, events) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match eventloop.poll().await {
                            Ok(ev) => {
                                if tx.send(Ok(ev)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                Client {
                    client,
                    events,
                    task,
                }
            }

            pub async fn simple(addr: SocketAddr, id: &str) -> Client {
                Client::connect(options(addr, id)).await.0
            }

            pub async fn next_event(&mut self) -> Event {
                self.next_event_within(RECV_TIMEOUT).await
            }

            /// Like [`Client::next_event`], waiting up to `d`.
            pub async fn next_event_within(&mut self, d: Duration) -> Event {
                match tokio::time::timeout(d, self.events.recv()).await {
                    Err(_) => panic!("timed out after {d:?} waiting for a client event"),
                    Ok(None) => panic!("client event loop ended"),
                    Ok(Some(Err(e))) => panic!("client connection error: {e}"),
                    Ok(Some(Ok(ev))) => ev,
                }
            }

            /// Waits for the broker's final ack of a QoS 1/2 publish.
            async fn wait_ack(&mut self, qos: QoS, d: Duration) {
                if qos == QoS::AtMostOnce {
                    return;
                }
                loop {
                    match self.next_event_within(d).await {
                        Event::Incoming(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => return,
                        Event::Incoming(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => return,
                        _ => {}
                    }
                }
            }

            /// Publishes and, for QoS 1/2, waits for the broker's final ack.
            pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
                self.client
                    .publish(topic, qos, retain, payload.to_vec())
                    .await
                    .unwrap();
                self.wait_ack(qos, RECV_TIMEOUT).await;
            }

            /// Like [`Client::publish`], waiting up to `d` for the ack (a
            /// cluster holds it while a peer is unreachable but not yet
            /// known to be).
            pub async fn publish_within(
                &mut self,
                topic: &str,
                qos: QoS,
                retain: bool,
                payload: &[u8],
                d: Duration,
            ) {
                self.client
                    .publish(topic, qos, retain, payload.to_vec())
                    .await
                    .unwrap();
                self.wait_ack(qos, d).await;
            }

            /// Next PUBLISH received, skipping other events.
            pub async fn next_publish(&mut self) -> Publish {
                loop {
                    if let Event::Incoming(Packet::Publish(p)) = self.next_event().await {
                        return p;
                    }
                }
            }

            /// Next PUBLISH received within `d`, skipping other events;
            /// `None` if none came.
            pub async fn try_next_publish(&mut self, d: Duration) -> Option<Publish> {
                let deadline = tokio::time::Instant::now() + d;
                loop {
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Err(_) => return None,
                        Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => return Some(p),
                        Ok(Some(Err(e))) => panic!("client connection error: {e}"),
                        Ok(None) => panic!("client event loop ended"),
                        Ok(Some(Ok(_))) => {}
                    }
                }
            }

            /// Asserts no PUBLISH arrives within `d`.
            pub async fn expect_no_publish(&mut self, d: Duration) {
                let deadline = tokio::time::Instant::now() + d;
                loop {
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Err(_) => return,
                        Ok(Some(Ok(Event::Incoming(Packet::Publish(p))))) => {
                            panic!("unexpected PUBLISH {p:?}")
                        }
                        Ok(Some(Err(e))) => panic!("client connection error: {e}"),
                        Ok(None) => panic!("client event loop ended"),
                        Ok(Some(Ok(_))) => {}
                    }
                }
            }

            /// Sends DISCONNECT and waits until it is on the wire.
            pub async fn disconnect(mut self) {
                self.client.disconnect().await.unwrap();
                let _ = tokio::time::timeout(RECV_TIMEOUT, async {
                    while let Some(Ok(ev)) = self.events.recv().await {
                        if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                })
                .await;
                // Let the event loop flush and close before the test moves on.
                let _ = tokio::time::timeout(RECV_TIMEOUT, &mut self.task).await;
            }
        }

        impl Drop for Client {
            fn drop(&mut self) {
                self.task.abort();
            }
        }
    };
}

/// MQTT 3.1.1 client.
pub mod v4 {
    use super::*;
    #[allow(unused_imports)]
    pub use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};

    rumqttc_client!();

    impl Client {
        /// Connects with `opts` and waits for a successful CONNACK; returns
        /// the client and the CONNACK's session-present flag.
        pub async fn connect(opts: MqttOptions) -> (Client, bool) {
            let mut c = Client::start(opts);
            let session_present = loop {
                match c.next_event().await {
                    Event::Incoming(Packet::ConnAck(ack)) => {
                        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
                        break ack.session_present;
                    }
                    _ => continue,
                }
            };
            (c, session_present)
        }

        /// Subscribes and waits for the SUBACK.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.unwrap();
            loop {
                if let Event::Incoming(Packet::SubAck(ack)) = self.next_event().await {
                    assert!(
                        ack.return_codes
                            .iter()
                            .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_))),
                        "subscription to {filter} refused: {ack:?}"
                    );
                    return;
                }
            }
        }
    }
}

/// MQTT 5.0 client.
pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    #[allow(unused_imports)]
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill,
        LastWillProperties, Packet, Publish, PublishProperties, RetainForwardRule,
        SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    rumqttc_client!();

    impl Client {
        /// Connects with `opts` and waits for a successful CONNACK.
        pub async fn connect(opts: MqttOptions) -> (Client, ConnAck) {
            let mut c = Client::start(opts);
            let connack = loop {
                if let Event::Incoming(Packet::ConnAck(ack)) = c.next_event().await {
                    assert_eq!(ack.code, ConnectReturnCode::Success);
                    break ack;
                }
            };
            (c, connack)
        }

        /// Next event or the connection error that ended the event loop.
        pub async fn next_event_or_error(&mut self) -> Result<Event, String> {
            match tokio::time::timeout(RECV_TIMEOUT, self.events.recv()).await {
                Err(_) => panic!("{}", elapsed_msg("a client event")),
                Ok(None) => Err("event loop ended".into()),
                Ok(Some(r)) => r,
            }
        }

        /// Subscribes with `filter` (and optional properties), waits for
        /// the SUBACK and returns its reason codes.
        pub async fn subscribe_filter(
            &mut self,
            filter: Filter,
            props: Option<SubscribeProperties>,
        ) -> Vec<SubscribeReasonCode> {
            match props {
                Some(p) => self
                    .client
                    .subscribe_many_with_properties([filter], p)
                    .await
                    .unwrap(),
                None => self.client.subscribe_many([filter]).await.unwrap(),
            }
            loop {
                if let Event::Incoming(Packet::SubAck(ack)) = self.next_event().await {
                    return ack.return_codes;
                }
            }
        }

        /// Subscribes and asserts success.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            let codes = self.subscribe_filter(Filter::new(filter, qos), None).await;
            assert!(
                codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_))),
                "subscription to {filter} refused: {codes:?}"
            );
        }

        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: &[u8],
            props: PublishProperties,
        ) {
            self.client
                .publish_with_properties(topic, qos, retain, payload.to_vec(), props)
                .await
                .unwrap();
            self.wait_ack(qos, RECV_TIMEOUT).await;
        }
    }
}
