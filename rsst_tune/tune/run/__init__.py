"""Running a sweep on Ray: the Tuner (`runner`), the trial function (`trainable`), Ray's set-up
(`ray_setup`), storage checks and the sweep lock (`storage`), Ray's state kept whole
(`ray_state`), the shared state of one sweep's callbacks (`context`), W&B logging
(`wandb_callback`)."""
