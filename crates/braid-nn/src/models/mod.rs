//! Built-in models written as ordinary [`crate::Model`]s, one file each; each is registered
//! with one line in the engine's built-in registry.

pub mod resnet;
pub mod transformer;

pub use resnet::{ResNet, ResNetKind};
pub use transformer::{TransformerKind, TransformerLm};
