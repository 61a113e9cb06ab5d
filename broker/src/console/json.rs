//! Messages of `spool.v1` to and from JSON in the proto3 canonical mapping (lowerCamelCase
//! names, 64-bit integers as strings, bytes as base64, enums by name), through the proto's
//! own descriptors: the JSON API speaks exactly the shapes the gRPC API does, with no
//! hand-written second schema.

use std::sync::LazyLock;

use prost::Message as _;
use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage, SerializeOptions};

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(spool_proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set built into spool-proto decodes")
});

/// The message `m` of type `name` (e.g. `spool.v1.ListTopicsResponse`) as JSON, every
/// field written (defaults too, so a page needs no fallbacks).
pub fn to_json(name: &str, m: &impl prost::Message) -> Vec<u8> {
    let desc = POOL
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is a message of spool.proto"));
    let dynamic = DynamicMessage::decode(desc, m.encode_to_vec().as_slice())
        .expect("a message decodes as its own type");
    let mut out = serde_json::Serializer::new(Vec::new());
    dynamic
        .serialize_with_options(
            &mut out,
            &SerializeOptions::new().skip_default_fields(false),
        )
        .expect("serializing to memory cannot fail");
    out.into_inner()
}

/// A message of type `name` from JSON; unknown fields are refused, so a typo is an error
/// instead of a silently ignored setting. The error says what is wrong.
pub fn from_json<M: prost::Message + Default>(name: &str, json: &[u8]) -> Result<M, String> {
    let desc = POOL
        .get_message_by_name(name)
        .unwrap_or_else(|| panic!("{name} is a message of spool.proto"));
    let mut de = serde_json::Deserializer::from_slice(json);
    let dynamic =
        DynamicMessage::deserialize_with_options(desc, &mut de, &DeserializeOptions::new())
            .map_err(|e| format!("the body is not a {name} in JSON: {e}"))?;
    de.end()
        .map_err(|e| format!("the body is not a {name} in JSON: {e}"))?;
    M::decode(dynamic.encode_to_vec().as_slice()).map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use spool_proto::v1;

    use super::*;

    #[test]
    fn json_follows_the_canonical_mapping_both_ways() {
        let r = v1::AppendResponse {
            partition: 2,
            base_offset: 1 << 60,
            record_count: 3,
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&to_json("spool.v1.AppendResponse", &r)).unwrap();
        assert_eq!(
            json["baseOffset"], "1152921504606846976",
            "64-bit as a string"
        );
        assert_eq!(json["recordCount"], 3);
        assert_eq!(json["duplicate"], false, "defaults are written");
        let req: v1::AppendRequest = from_json(
            "spool.v1.AppendRequest",
            br#"{"topic":"t","records":[{"value":"aGk=","headers":[{"key":"k","value":""}]}]}"#,
        )
        .unwrap();
        assert_eq!(&req.records[0].value[..], b"hi", "bytes as base64");
        let typo = from_json::<v1::AppendRequest>("spool.v1.AppendRequest", br#"{"topik":"t"}"#);
        assert!(typo.unwrap_err().contains("topik"));
    }
}
