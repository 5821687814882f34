//! The engine's ControlNet units (`data.controlnet`): each unit's graph resolved under `models_root`, loaded once
//! per file ([`super::file_models`]), and its control image read and sized for the run, before any image is
//! generated: a missing model or an unreadable image fails the request at once.

use std::sync::Arc;

use super::Engine;
use crate::error::Result;
use crate::pipeline::controlnet::{self, ControlNet, ControlUnit};
use crate::protocol::params::ControlNetRequest;

impl Engine {
    /// The units `requests` ask for, ready for `width` × `height` images, and the seconds spent loading graphs.
    pub(super) fn prepare_controlnets(
        &self,
        requests: &[ControlNetRequest],
        width: u32,
        height: u32,
    ) -> Result<(Vec<ControlUnit>, f64)> {
        let mut units = Vec::with_capacity(requests.len());
        let mut seconds = 0.0;
        for request in requests {
            let field = format!("{}.model_path", request.field);
            let path = controlnet::resolve(self.root()?, &request.model, &field)?;
            let (net, s): (Arc<ControlNet>, f64) =
                self.controlnets.get_or_load(&path, || ControlNet::load(&self.runtime.env, &path, &self.sessions))?;
            seconds += s;
            units.push(ControlUnit::new(net, request, width, height)?);
        }
        Ok((units, seconds))
    }
}
