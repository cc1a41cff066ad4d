"""What the runtime is asked to create for an app, whatever the deploy strategy."""

from __future__ import annotations

from diplo.model import (
    LABEL_APP,
    LABEL_PROJECT,
    LABEL_REPLICA,
    LABEL_SPEC_HASH,
    ContainerSpec,
    RunContainer,
)


def container_spec(
    action: RunContainer, stop_timeout: int, replica: int = 1, name: str | None = None
) -> ContainerSpec:
    """Replica `replica` of the action's app, named `name` (default: the action's)."""
    spec = action.spec
    return ContainerSpec(
        name=name or action.name,
        image=spec.image,
        labels={
            **dict(spec.labels),
            LABEL_PROJECT: spec.project,
            LABEL_APP: action.app,
            LABEL_SPEC_HASH: spec.spec_hash,
            LABEL_REPLICA: str(replica),
        },
        network=action.network,
        aliases=(action.app,),
        command=spec.command,
        entrypoint=spec.entrypoint,
        env=spec.env,
        ports=action.ports,
        mounts=spec.mounts,
        restart=spec.restart,
        memory=spec.memory,
        nano_cpus=spec.nano_cpus,
        init=spec.init,
        stop_signal=spec.stop_signal,
        stop_timeout=stop_timeout,
        user=spec.user,
        working_dir=spec.working_dir,
    )
