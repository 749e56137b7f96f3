defmodule Vsmcp.CRDT.DoctestTest do
  use ExUnit.Case, async: true

  # GCounter, Telemetry and Sync.Transport are doctested in their own test files.
  doctest Vsmcp.CRDT.Types.PNCounter
  doctest Vsmcp.CRDT.Types.ORSet
  doctest Vsmcp.CRDT.Types.LWWRegister
  doctest Vsmcp.CRDT.HLC
  doctest Vsmcp.CRDT.ContextStore
end
