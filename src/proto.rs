//! The protobuf messages and gRPC services of `proto/`, generated at build time by
//! `build.rs`: [`podscore::v1`] (the `/score` request and response, the `Scorer`
//! service) and [`inference`] (the Open Inference Protocol's `GRPCInferenceService`).
//!
//! Generated code only: it knows the wire types, nothing of the service, HTTP or tract.
//! The conversions to and from the service's types live with the front ends that use
//! them (`api::protobuf`).

/// The podscore API, version 1.
pub mod podscore {
    pub mod v1 {
        #![allow(clippy::all)]
        tonic::include_proto!("podscore.v1");
    }
}

/// The KServe Open Inference Protocol (predict v2) over gRPC.
pub mod inference {
    #![allow(clippy::all)]
    tonic::include_proto!("inference");
}
