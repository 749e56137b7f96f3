defmodule Vsmcp.CRDT.DoctestTest do
  use ExUnit.Case, async: true

  # Examples that start syncing stores or import a DETS file log (at info
  # level and below); shown only when an example fails.
  @moduletag :capture_log

  # The examples that open stores or write files (ContextStore, Options,
  # Location, DetsImport, Sync.Peer) do so under System.tmp_dir!() as
  # `doc_<time>_<n>`; remove them when the module is done.
  setup_all do
    started = System.system_time()

    on_exit(fn ->
      for dir <- Path.wildcard(Path.join(System.tmp_dir!(), "doc_*")),
          [_, t] <- [Regex.run(~r/doc_(\d+)_\d+$/, dir)],
          String.to_integer(t) >= started,
          do: File.rm_rf(dir)
    end)
  end

  # GCounter, Telemetry, Sync.Transport (with Faulty and PubSub) are
  # doctested in their own test files.
  doctest Vsmcp.CRDT.Types.PNCounter
  doctest Vsmcp.CRDT.Types.ORSet
  doctest Vsmcp.CRDT.Types.LWWRegister
  doctest Vsmcp.CRDT.Types.EncodedState
  doctest Vsmcp.CRDT.HLC
  doctest Vsmcp.CRDT.Native
  doctest Vsmcp.CRDT.ContextStore
  doctest Vsmcp.CRDT.UnsafeTerm
  doctest Vsmcp.CRDT.Error
  doctest Vsmcp.CRDT.Telemetry.Metrics
  doctest Vsmcp.CRDT.ContextStore.Options
  doctest Vsmcp.CRDT.Storage.DetsImport
  doctest Vsmcp.CRDT.Storage.Location
  doctest Vsmcp.CRDT.Sync.Transport.PG
  doctest Vsmcp.CRDT.Sync.Peer
  # start_link/1 starts the default store, whose name is global: its
  # example runs in Vsmcp.CRDT.ContextStoreDefaultStoreTest (not async).
  doctest Vsmcp.CRDT.Supervisor, except: [start_link: 1]
end
