//! containerd.services.events.ttrpc.v1 on berthd's ttrpc socket: shims forward their task
//! events (create, start, exit, exec, OOM, ...) here, and they join the event bus.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_shim_protos::api::Empty;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use ttrpc::asynchronous::{Service, TtrpcContext};

use crate::events::envelope_in;
use crate::types::Envelope;
use berth_core::events::EventBus;

pub struct ShimEventsService {
    pub bus: EventBus,
}

fn invalid(msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INVALID_ARGUMENT, msg))
}

#[async_trait::async_trait]
impl Events for ShimEventsService {
    async fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req
            .envelope
            .into_option()
            .ok_or_else(|| invalid("forward needs an envelope".into()))?;
        let forwarded = Envelope {
            timestamp: env.timestamp.as_ref().map(|t| prost_types::Timestamp {
                seconds: t.seconds,
                nanos: t.nanos,
            }),
            namespace: env.namespace,
            topic: env.topic,
            event: env.event.into_option().map(|a| prost_types::Any {
                type_url: a.type_url,
                value: a.value,
            }),
        };
        let e = envelope_in(forwarded).map_err(|s| invalid(s.message().to_owned()))?;
        self.bus.send(e);
        Ok(Empty::new())
    }
}

/// The ttrpc services berthd registers on its ttrpc socket.
pub fn ttrpc_services(bus: EventBus) -> HashMap<String, Service> {
    create_events(Arc::new(ShimEventsService { bus }))
}
