defmodule Vsmcp.CRDT.Application do
  # Internal: hidden from the documentation.
  #
  # The application callback: starts what must run on every node before any
  # store syncs, which today is the `:pg` scope of
  # `Vsmcp.CRDT.Sync.Transport.PG` (`Vsmcp.CRDT.Sync.PG`), and `:telemetry`
  # when it is available (`Vsmcp.CRDT.Telemetry`).
  #
  # `:pg` only sees the members of a scope on the nodes where that scope
  # runs, so it belongs to the application rather than to a store: a node
  # with no store yet still has to exist for `:pg` when one starts.
  #
  # Stores are not started here; the host application supervises them
  # (`Vsmcp.CRDT.Supervisor` for the default store).
  #
  # Cost: one `:pg` scope process per node, started once; nothing per store
  # or per call. Invariant: the scope runs on every node where the application
  # runs, so `:pg` membership is visible cluster-wide before any
  # store joins it.
  @moduledoc false

  use Application

  @impl true
  def start(_type, _args) do
    # `:telemetry` is an optional dependency, so Mix does not start it;
    # without it running, every event would log a warning.
    if Code.ensure_loaded?(:telemetry), do: Application.ensure_all_started(:telemetry)

    if Application.get_env(:vsmcp_crdt, :telemetry_operations, false),
      do: Vsmcp.CRDT.Telemetry.operations(true)

    scope = Vsmcp.CRDT.Sync.Transport.PG.default_scope()

    children = [
      %{id: scope, start: {:pg, :start_link, [scope]}}
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: __MODULE__.Supervisor)
  end
end
