"""Consumer stage: decode frames, run the Moments in Time model, publish predictions."""
