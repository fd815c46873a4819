//! A mode's [`Backend`] with the cluster's records and rules around it:
//! an ADD is answered only once its endpoint record is written and the
//! node's rules know the pod (so its first packet meets its policies), a
//! DEL or GC removes the record before the address is free again.

use std::sync::Arc;
use std::time::Instant;

use podwire_proto::{ErrorKind, Request, Response};

use super::Exposure;
use crate::Backend;

pub(crate) struct Enforced<B> {
    pub inner: Arc<B>,
    pub exposure: Arc<Exposure>,
}

impl<B: Backend> Backend for Enforced<B> {
    fn handle(&self, req: Request, deadline: Instant) -> Response {
        match req {
            Request::Add(add) => {
                let key = add.key.clone();
                let (ns, name) = (add.pod_namespace.clone(), add.pod_name.clone());
                let resp = self.inner.handle(Request::Add(add), deadline);
                let Response::Allocated { allocation } = &resp else {
                    return resp;
                };
                match self
                    .exposure
                    .on_add(&key, allocation.ip, ns.as_deref(), name.as_deref())
                {
                    Ok(()) => resp,
                    Err(message) => {
                        // Nothing half-done: the address goes back.
                        let undo = self
                            .inner
                            .handle(Request::Del { key: key.clone() }, deadline);
                        if let Response::Error { message: m, .. } = undo {
                            tracing::warn!(container = %key.container_id, "releasing after a failed ADD: {m}");
                        }
                        tracing::warn!(container = %key.container_id, "ADD refused: {message}");
                        Response::Error {
                            kind: ErrorKind::TryAgain,
                            message,
                        }
                    }
                }
            }
            Request::Del { key } => {
                if let Err(message) = self.exposure.on_del(&key) {
                    return Response::Error {
                        kind: ErrorKind::TryAgain,
                        message,
                    };
                }
                self.inner.handle(Request::Del { key }, deadline)
            }
            Request::Gc { network, valid } => {
                let resp = self.inner.handle(Request::Gc { network, valid }, deadline);
                if let Response::Released { allocations } = &resp {
                    for a in allocations {
                        if let Err(e) = self.exposure.on_del(&a.key) {
                            tracing::warn!(container = %a.key.container_id, "GC: {e}");
                        }
                    }
                }
                resp
            }
            other => self.inner.handle(other, deadline),
        }
    }

    fn state(&self) -> crate::introspect::NodeState {
        self.inner.state()
    }
}
