defmodule Vsmcp.CRDT.Sync.BadPeerInputTest do
  # Hostile bytes delivered to a syncing store's peer process: each kind is
  # refused and counted, logged once, and the store keeps working.
  use ExUnit.Case, async: true

  import ExUnit.CaptureLog

  alias Vsmcp.CRDT.ContextStore

  setup do
    dir = Vsmcp.CRDT.TestHelpers.tmp_dir!("bad_peer_input")
    topic = "bad-input-#{System.unique_integer([:positive])}"

    {:ok, store} =
      ContextStore.start_link(storage_opts: [data_dir: dir], sync_opts: [topic: topic])

    {:ok, peer} = GenServer.call(store, :peer)
    on_exit(fn -> File.rm_rf(dir) end)
    %{store: store, peer: peer, topic: topic}
  end

  defp deliver(%{peer: peer, topic: topic}, bytes) do
    send(peer, {:vsmcp_crdt_sync, topic, bytes})
    # A call after the message: it was handled when this returns.
    _ = :sys.get_state(peer)
  end

  defp rejected(%{store: store}), do: ContextStore.sync_info(store).rejected

  defp bin(b), do: <<0xC4, byte_size(b)>> <> b

  test "forged, unknown-version, too-new-clock, no-common-version and oversized messages",
       ctx do
    :ok = ContextStore.create(ctx.store, :n, :g_counter)

    log =
      capture_log(fn ->
        for _ <- 1..3 do
          deliver(ctx, :crypto.strong_rand_bytes(64))
          deliver(ctx, <<0xC9, 2, 1>> <> :crypto.strong_rand_bytes(40))
        end

        # An unknown wire version.
        deliver(ctx, <<0xC9, 7, 1, 0x90>>)

        # A version 2 Ack whose clock is ten minutes ahead.
        ahead = System.system_time(:millisecond) + 600_000
        deliver(ctx, <<0xC9, 2, 2, 0x94>> <> bin("abc") <> <<0, 0xCF, ahead::64, 0>>)

        # A hello speaking only version 9.
        hello = <<0xC9, 1, 6, 0x97>> <> bin("xyz") <> bin(<<9>>) <> <<0, 0, 0, 0>> <> bin("")
        deliver(ctx, hello)

        # Two MiB of junk.
        deliver(ctx, <<0xC9, 2, 1>> <> :binary.copy(<<0>>, 2 * 1024 * 1024))
      end)

    r = rejected(ctx)
    assert r.malformed >= 6
    assert r.unsupported_version == 2
    assert r.clock_ahead == 1
    assert r.oversized == 1
    # Logged once per peer and kind, not per message.
    assert length(Regex.scan(~r/refused malformed/, log)) == 1
    assert log =~ "refused clock_ahead"

    # The store is untouched and keeps working.
    assert {:ok, 1} = ContextStore.increment(ctx.store, :n)
    assert Process.alive?(ctx.peer)
  end

  # A :logger handler that sends a test process the events of one store
  # (other tests' stores log at the same time).
  defmodule LogSink do
    @moduledoc false
    def log(%{meta: meta} = event, %{config: %{pid: pid, store: store}}) do
      if Map.get(meta, :crdt_store) == store, do: send(pid, {:log, event})
    end
  end

  test "a refusal's log line carries the domain, store, topic and reason as metadata", ctx do
    id = :"vsmcp_crdt_test_sink_#{System.unique_integer([:positive])}"
    config = %{config: %{pid: self(), store: ctx.store}, level: :all}
    :ok = :logger.add_handler(id, LogSink, config)
    on_exit(fn -> :logger.remove_handler(id) end)

    capture_log(fn -> deliver(ctx, <<0xC9, 7, 1, 0x90>>) end)

    assert_receive {:log, %{level: :warning, meta: meta}}, 1_000
    assert [:elixir, :vsmcp_crdt, :sync] = meta.domain
    assert meta.crdt_store == ctx.store
    assert meta.crdt_topic == ctx.topic
    assert meta.crdt_reject == :unsupported_version
  end

  test "forged hellos from many fake peers: membership and peer labels stay bounded" do
    dir = Vsmcp.CRDT.TestHelpers.tmp_dir!("forged_hellos")
    topic = "forged-#{System.unique_integer([:positive])}"

    {:ok, store} =
      ContextStore.start_link(
        storage_opts: [data_dir: dir],
        sync_opts: [topic: topic, down_after: 100, heartbeat_interval: 50]
      )

    {:ok, peer} = GenServer.call(store, :peer)
    on_exit(fn -> File.rm_rf(dir) end)
    ctx = %{peer: peer, topic: topic}
    wall = System.system_time(:millisecond)

    capture_log(fn ->
      for _ <- 1..300 do
        # A version 1 hello from a random 32-byte sync id speaking 1..4.
        from = :crypto.strong_rand_bytes(32)

        hello =
          <<0xC9, 1, 6, 0x97>> <>
            bin(from) <> bin(<<1, 2, 3, 4>>) <> <<0xCF, wall::64, 0, 0, 0>> <> bin("fake")

        deliver(ctx, hello)
      end
    end)

    # At most 256 member directories (and so sessions and labels).
    assert map_size(:sys.get_state(peer).labels) <= 256
    assert length(ContextStore.sync_info(store).members) == 256
    assert ContextStore.sync_info(store).rejected.too_many_peers >= 44

    # Silent fakes go down, and their labels go with their sessions.
    Vsmcp.CRDT.TestHelpers.eventually(fn -> map_size(:sys.get_state(peer).labels) == 0 end)
    :ok = ContextStore.create(store, :n, :g_counter)
    assert {:ok, 1} = ContextStore.increment(store, :n)
  end
end
