//! Parallel split learning's protocol (`split`, tag 3). With `compression.split` every tensor
//! travels packed; each side unpacks to the sizes it expects and refuses the other form.

use crate::wire::{Labels, Tensor};

crate::protocol! {
    /// A message of split learning; `step` is the global step, from 1. Every kind is
    /// replayed: a server or client restored from its state redoes its side of the step.
    pub enum Msg {
        protocol: "split", tag: 3, version: 1;
        /// Server to client: run your part on `count` of your samples, starting at position
        /// `offset` of your epoch-`epoch` (from 1) sample order, with `client_part`, the client
        /// part's current parameters (shared between the step's clients in-process); send
        /// back the activations.
        Request(1, "split-request", round = step) [replay] {
            step: u64, epoch: u32, offset: u32, count: u32, client_part: Tensor,
        },
        /// Client to server: the samples' `labels` (one byte each below 256 classes) and `acts`, their
        /// activations at the cut, sample by sample, answering a [`Msg::Request`].
        Activations(2, "split-activations", round = step) [replay] {
            step: u64, labels: Vec<u32> as Labels, acts: Tensor,
        },
        /// Server to client: `grad`, the loss's gradient with respect to the client's
        /// activations (same layout).
        Gradient(3, "split-gradient", round = step) [replay] { step: u64, grad: Tensor },
        /// Client to server: `grad`, the gradient of the client part's parameters, one value
        /// per parameter.
        ClientGrad(4, "split-client-grad", round = step) [replay] {
            step: u64, grad: Tensor,
        },
    }
}
