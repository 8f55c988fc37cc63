//! Compiles `proto/herald/v1/herald.proto` into Rust types with a pure-Rust
//! protobuf compiler (protox), so building Herald needs no `protoc`.

fn main() {
    let proto_root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let schema = "herald/v1/herald.proto";
    println!("cargo:rerun-if-changed={proto_root}/{schema}");

    let descriptors = match protox::compile([schema], [proto_root]) {
        Ok(descriptors) => descriptors,
        Err(err) => panic!("proto/{schema} does not compile: {err:?}"),
    };
    if let Err(err) = prost_build::Config::new().compile_fds(descriptors) {
        panic!("generating Rust types from proto/{schema} failed: {err}");
    }
}
