//! Server reflection that lists exactly what one process serves.
//!
//! `twopc.proto` defines both roles' services in one file, so registering
//! its descriptor set as it is would make every process list (and describe)
//! both `twopc.v1.Coordinator` and `twopc.v1.Participant`, and a stock tool
//! (grpcurl) would offer calls that answer UNIMPLEMENTED. Each process
//! serves instead a copy of the file with only its own service kept (the
//! messages stay: they are shared), plus the standard services it really
//! serves: health (`grpc.health.v1.Health`) and reflection itself
//! (`grpc.reflection.v1.ServerReflection`).

use prost::Message;
use prost_types::FileDescriptorSet;

/// The standard gRPC health service's name, served by every process.
pub const HEALTH: &str = "grpc.health.v1.Health";
/// The gRPC reflection service's name (v1), served by every process.
pub const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

/// The fully qualified names a process serving `own` (e.g.
/// `twopc.v1.Coordinator`) lists, in the order ListServices answers them.
pub fn listed_services(own: &str) -> Vec<String> {
    vec![own.to_string(), HEALTH.to_string(), REFLECTION.to_string()]
}

/// `twopc.v1`'s descriptors with every service but `own` removed.
/// Fails if `own` is not a service of the file (a programming error).
fn own_descriptors(own: &str) -> Result<FileDescriptorSet, String> {
    let mut set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the embedded twopc.v1 descriptor set does not decode: {e}"))?;
    let mut found = false;
    for file in &mut set.file {
        let package = file.package.clone().unwrap_or_default();
        file.service.retain(|s| {
            let keep = format!("{package}.{}", s.name()) == own;
            found |= keep;
            keep
        });
    }
    if !found {
        return Err(format!("{own} is not a service of twopc.v1"));
    }
    Ok(set)
}

/// The reflection service of a process serving `own`: it lists and
/// describes `own`, health and reflection, and nothing else.
pub fn service(
    own: &str,
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    String,
> {
    let health = FileDescriptorSet::decode(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .map_err(|e| format!("the health service's descriptor set does not decode: {e}"))?;
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(own_descriptors(own)?)
        .register_file_descriptor_set(health);
    for name in listed_services(own) {
        builder = builder.with_service_name(name);
    }
    builder.build_v1().map_err(|e| format!("cannot build the reflection service: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_keeps_only_its_own_service() {
        for (own, other) in [("twopc.v1.Coordinator", "Participant"), ("twopc.v1.Participant", "Coordinator")] {
            let set = own_descriptors(own).unwrap();
            let services: Vec<&str> = set.file.iter().flat_map(|f| f.service.iter().map(|s| s.name())).collect();
            assert_eq!(services, [own.rsplit('.').next().unwrap()], "{own}");
            assert!(!services.contains(&other));
            // The shared messages stay.
            assert!(set.file.iter().any(|f| f.message_type.iter().any(|m| m.name() == "GetRequest")));
        }
        assert!(own_descriptors("twopc.v1.Nothing").is_err());
        assert!(service("twopc.v1.Coordinator").is_ok());
    }
}
