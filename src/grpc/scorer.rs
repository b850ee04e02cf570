//! `podscore.v1.Scorer/Score`: admitted as `/score` is ([`super::admit`] took its place in
//! line before the message was read; here it waits for a slot), the message converted by
//! the API's protobuf codec, scored by the one pipeline ([`Service::score`]) within the
//! call's deadline.

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::protobuf::{
    request_from_message, response_message, timings_message, too_many_candidates,
};
use crate::proto::podscore::v1 as pb;
use crate::service::metrics::Stage;
use crate::service::respond::micros;
use crate::service::{Incoming, Service};

use super::admit::admitted;
use super::status::{service_status, status};

/// The `Scorer` service over the shared [`Service`].
#[derive(Debug, Clone)]
pub struct Scorer {
    service: Service,
}

impl Scorer {
    pub fn new(service: Service) -> Scorer {
        Scorer { service }
    }
}

#[tonic::async_trait]
impl pb::scorer_server::Scorer for Scorer {
    async fn score(
        &self,
        request: Request<pb::ScoreRequest>,
    ) -> Result<Response<pb::ScoreResponse>, Status> {
        let (ticket, deadline) = admitted(&request)?;
        let service = &self.service;
        let permit = service
            .wait_for_slot(ticket, deadline)
            .await
            .map_err(service_status)?;
        let started = Instant::now();
        let message = request.into_inner();
        let max_candidates = service.config().limits.max_candidates;
        if message.candidates.len() > max_candidates {
            return Err(status(&ApiError::Invalid(too_many_candidates(
                max_candidates,
            ))));
        }
        let request =
            request_from_message(message).map_err(|invalid| status(&ApiError::Invalid(invalid)))?;
        let response = service
            .score(Incoming {
                request,
                decode: started.elapsed(),
                deadline,
                permit,
            })
            .await
            .map_err(service_status)?;
        let encoding = Instant::now();
        let mut message = response_message(&response);
        // tonic serializes the message after this returns; the encode stage times the
        // conversion to it.
        let mut timings = response.timings_us;
        timings.encode = micros(encoding.elapsed());
        message.timings_us = Some(timings_message(&timings));
        service
            .metrics()
            .observe_stage(Stage::Encode, Duration::from_micros(timings.encode));
        Ok(Response::new(message))
    }
}
