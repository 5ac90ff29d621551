"""The job runtime: creating and cancelling jobs (service), queue names and sending (queue),
claims and leases (leases, heartbeat), running a claimed job (runner, training, reporter),
requeueing lost ones (sweeper), `serve`'s local worker (supervisor) and the shared checkpoint
folder of full fine-tuning (checkpoint_store)."""
