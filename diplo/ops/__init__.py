"""The operations layer: every user-visible operation, written once. The CLI, the API
and the controller call these; only these (and the composition roots) touch the
executor and the adapters."""
