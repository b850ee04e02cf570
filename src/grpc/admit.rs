//! Admission of the gRPC calls that run the model (`Scorer/Score`, `ModelInfer`): a
//! place in line ([`Service::enter`]) is taken before tonic reads and decodes the
//! message, as `POST /score` takes one before reading its body, and a refused call is
//! answered at once with the refusal's status, its message never read. The handler then
//! takes its [`Place`] from the request's extensions and waits for a slot
//! ([`Service::wait_for_slot`]) before it converts the message and scores.
//!
//! This module knows HTTP/2 requests as tonic's server sees them, the `grpc-timeout`
//! header and the service's admission; it knows nothing of messages or the pipeline.

use std::future::{Future, ready};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service as TowerService};

use crate::service::{Service, Ticket};

use super::status::service_status;
use super::{Config, deadline};

/// The calls that take a place in line: those that run the model. Health and metadata
/// answer from memory and are never shed, like their HTTP routes.
pub const ADMITTED_PATHS: [&str; 2] = [
    "/podscore.v1.Scorer/Score",
    "/inference.GRPCInferenceService/ModelInfer",
];

/// A call's place in line and deadline, handed from the layer to its handler through the
/// request's extensions (which must be `Clone`, hence the shared cell).
#[derive(Debug, Clone)]
pub struct Place(Arc<Mutex<Option<(Ticket, Instant)>>>);

impl Place {
    fn new(ticket: Ticket, deadline: Instant) -> Place {
        Place(Arc::new(Mutex::new(Some((ticket, deadline)))))
    }
}

/// The ticket and deadline the layer took for `request`. A call on an admitted path
/// without one can only be a wiring bug, answered INTERNAL.
pub fn admitted<T>(request: &tonic::Request<T>) -> Result<(Ticket, Instant), Status> {
    request
        .extensions()
        .get::<Place>()
        // The lock is held for the `take` alone, never across an await.
        .and_then(|place| place.0.lock().ok()?.take())
        .ok_or_else(|| Status::internal("the call was not admitted"))
}

/// Wraps the gRPC routes with [`Admit`].
#[derive(Debug, Clone)]
pub struct AdmitLayer {
    pub service: Service,
    pub config: Config,
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            inner,
            service: self.service.clone(),
            config: self.config.clone(),
        }
    }
}

/// The routes, with a place in line taken for calls on [`ADMITTED_PATHS`].
#[derive(Debug, Clone)]
pub struct Admit<S> {
    inner: S,
    service: Service,
    config: Config,
}

type Answer<B, E> = Pin<Box<dyn Future<Output = Result<http::Response<B>, E>> + Send>>;

impl<S, B, R> TowerService<http::Request<B>> for Admit<S>
where
    S: TowerService<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Answer<R, S::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if ADMITTED_PATHS.contains(&request.uri().path()) {
            let deadline = deadline(request.headers(), &self.config);
            match self.service.enter(deadline) {
                Ok(ticket) => {
                    request
                        .extensions_mut()
                        .insert(Place::new(ticket, deadline));
                }
                Err(refusal) => return Box::pin(ready(Ok(service_status(refusal).into_http()))),
            }
        }
        Box::pin(self.inner.call(request))
    }
}
