defmodule Vsmcp.CRDT.Sync.TransportTest do
  # Single-node behaviour of the transports; the multi-node paths are in
  # cluster_harness_test.exs.
  #
  # Proving that a message did NOT arrive never waits: after the action, the
  # test sends the member a plain `:ping`. Messages between two processes
  # keep their order and both transports enqueue local deliveries before
  # returning, so once the member's `:pong` is back, anything it was sent
  # is already in the test's mailbox.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.Sync.Transport
  alias Vsmcp.CRDT.Sync.Transport.{Faulty, PG, PubSub}

  doctest Transport
  doctest Faulty
  # Needs phoenix_pubsub started (setup_all below).
  doctest PubSub

  defmodule MinimalTransport do
    # Only the required callbacks (no broadcast_from/4), over :pg.
    @behaviour Vsmcp.CRDT.Sync.Transport
    defdelegate start(opts), to: PG
    defdelegate join(state, topic, key), to: PG
    defdelegate broadcast(state, topic, payload), to: PG
    defdelegate send_to(state, topic, key, payload), to: PG
    defdelegate leave(state, topic, key), to: PG
  end

  setup_all do
    # An optional dependency: Elixir 1.14 does not list it among this
    # application's applications, so the test starts it (a host
    # application that depends on phoenix_pubsub gets it started).
    {:ok, _} = Application.ensure_all_started(:phoenix_pubsub)
    :ok
  end

  setup do
    topic = "topic-#{System.unique_integer([:positive])}"
    scope = :"vsmcp_transport_test_pg_#{System.unique_integer([:positive])}"
    start_supervised!(%{id: scope, start: {:pg, :start_link, [scope]}})
    pubsub = :"vsmcp_transport_test_pubsub_#{System.unique_integer([:positive])}"
    start_supervised!({Phoenix.PubSub, name: pubsub})
    %{topic: topic, scope: scope, pubsub: pubsub}
  end

  # A process that joins `topic` as `key`, forwards to the test process
  # every message it gets as {:got, key, message}, and runs functions sent
  # to it (to call the transport as itself).
  defp member(module, state, topic, key) do
    test = self()

    pid =
      spawn_link(fn ->
        :ok = module.join(state, topic, key)
        send(test, {:joined, key})
        forward(test, key)
      end)

    assert_receive {:joined, ^key}
    pid
  end

  defp forward(test, key) do
    receive do
      {:run, fun} ->
        send(test, {:ran, key, fun.()})

      :ping ->
        send(test, {:pong, key})

      message ->
        send(test, {:got, key, message})
    end

    forward(test, key)
  end

  defp run_in(member, key, fun) do
    send(member, {:run, fun})
    assert_receive {:ran, ^key, result}
    result
  end

  # Waits until `member` has handled everything sent to it so far.
  defp flush_member(member, key) do
    send(member, :ping)
    assert_receive {:pong, ^key}
  end

  for {name, module} <- [{"PG", PG}, {"PubSub", PubSub}] do
    describe "#{name}" do
      @describetag transport: module

      setup %{transport: module} = context do
        opts =
          case module do
            PG -> [scope: context.scope]
            PubSub -> [pubsub: context.pubsub]
          end

        {:ok, state} = module.start(opts)
        %{state: state}
      end

      test "broadcast reaches every other member, not the caller", c do
        %{transport: t, state: s, topic: topic} = c
        :ok = t.join(s, topic, "me")
        b = member(t, s, topic, "b")
        d = member(t, s, topic, "d")

        :ok = t.broadcast(s, topic, "hi")

        assert_receive {:got, "b", {:vsmcp_crdt_sync, ^topic, "hi"}}
        assert_receive {:got, "d", {:vsmcp_crdt_sync, ^topic, "hi"}}
        flush_member(b, "b")
        flush_member(d, "d")
        refute_received {:vsmcp_crdt_sync, _, "hi"}

        # ... and the caller does get the others' broadcasts.
        :ok = run_in(b, "b", fn -> t.broadcast(s, topic, "from b") end)
        assert_receive {:vsmcp_crdt_sync, ^topic, "from b"}
        assert_receive {:got, "d", {:vsmcp_crdt_sync, ^topic, "from b"}}
        flush_member(b, "b")
        refute_received {:got, "b", {:vsmcp_crdt_sync, _, "from b"}}
      end

      test "send_to reaches only the member with that key", c do
        %{transport: t, state: s, topic: topic} = c
        b = member(t, s, topic, "b")
        d = member(t, s, topic, "d")

        :ok = t.send_to(s, topic, "b", "for b")
        :ok = t.send_to(s, topic, "nobody", "for nobody")

        assert_receive {:got, "b", {:vsmcp_crdt_sync, ^topic, "for b"}}
        flush_member(b, "b")
        flush_member(d, "d")
        refute_received {:got, _, {:vsmcp_crdt_sync, _, "for nobody"}}
        refute_received {:got, "d", _}
      end

      test "topics and keys do not mix, whatever characters they hold", c do
        %{transport: t, state: s} = c
        # Joined as topic "x/y", key "z"; the sends below name other pairs.
        m = member(t, s, "x/y", "z")
        _other = member(t, s, "x", "y/z")

        :ok = t.send_to(s, "x", "y/z", "wrong pair")
        :ok = t.send_to(s, "x/y/z", "", "wrong pair")
        :ok = t.broadcast(s, "x", "wrong topic")
        :ok = t.send_to(s, "x/y", "z", "right")

        assert_receive {:got, "z", {:vsmcp_crdt_sync, "x/y", "right"}}
        flush_member(m, "z")
        refute_received {:got, "z", {:vsmcp_crdt_sync, _, "wrong" <> _}}
      end

      test "joining twice delivers once", c do
        %{transport: t, state: s, topic: topic} = c
        :ok = t.join(s, topic, "me")
        :ok = t.join(s, topic, "me")
        b = member(t, s, topic, "b")

        :ok = run_in(b, "b", fn -> t.broadcast(s, topic, "once") end)
        :ok = run_in(b, "b", fn -> t.send_to(s, topic, "me", "direct once") end)

        assert_receive {:vsmcp_crdt_sync, ^topic, "once"}
        assert_receive {:vsmcp_crdt_sync, ^topic, "direct once"}
        refute_received {:vsmcp_crdt_sync, _, "once"}
        refute_received {:vsmcp_crdt_sync, _, "direct once"}
      end

      test "leave stops delivery of broadcasts and direct messages", c do
        %{transport: t, state: s, topic: topic} = c
        b = member(t, s, topic, "b")
        d = member(t, s, topic, "d")

        :ok = run_in(b, "b", fn -> t.leave(s, topic, "b") end)
        :ok = t.broadcast(s, topic, "after leave")
        :ok = t.send_to(s, topic, "b", "direct after leave")

        assert_receive {:got, "d", {:vsmcp_crdt_sync, ^topic, "after leave"}}
        flush_member(b, "b")
        flush_member(d, "d")
        refute_received {:got, "d", {:vsmcp_crdt_sync, _, "direct after leave"}}
        refute_received {:got, "b", {:vsmcp_crdt_sync, _, _}}

        # Leaving without having joined is fine too.
        assert :ok = t.leave(s, topic, "never joined")
      end
    end
  end

  describe "start/1 validation" do
    test "PG needs its scope running" do
      assert {:error, :pg_scope_not_running} = PG.start(scope: :vsmcp_no_such_scope)
    end

    test "the application starts PG's default scope" do
      assert is_pid(Process.whereis(PG.default_scope()))
      assert {:ok, %{scope: Vsmcp.CRDT.Sync.PG}} = PG.start([])
    end

    test "PubSub needs its server running" do
      assert {:error, {:pubsub_not_running, :vsmcp_no_such_pubsub}} =
               PubSub.start(pubsub: :vsmcp_no_such_pubsub)
    end
  end

  describe "select/1" do
    test "without :transport: PubSub when its server runs, else PG", %{pubsub: pubsub} do
      assert {:ok, {PubSub, opts}} = Transport.select(pubsub: pubsub, transport_opts: [a: 1])
      assert opts[:pubsub] == pubsub and opts[:a] == 1

      assert {:ok, {PG, [a: 1]}} =
               Transport.select(pubsub: :vsmcp_no_such_pubsub, transport_opts: [a: 1])
    end

    test "the default server name is Vsmcp.PubSub" do
      assert {:ok, {PG, []}} = Transport.select([])
      start_supervised!(Supervisor.child_spec({Phoenix.PubSub, name: Vsmcp.PubSub}, id: :default))
      assert {:ok, {PubSub, [pubsub: Vsmcp.PubSub]}} = Transport.select([])
    end

    test "forced :pubsub fails when its server is not running", %{pubsub: pubsub} do
      assert {:error, {:pubsub_not_running, :vsmcp_no_such_pubsub}} =
               Transport.select(transport: :pubsub, pubsub: :vsmcp_no_such_pubsub)

      assert {:ok, {PubSub, [pubsub: ^pubsub]}} =
               Transport.select(transport: :pubsub, pubsub: pubsub)
    end

    test "forced :pg wins over a running PubSub", %{pubsub: pubsub} do
      assert {:ok, {PG, [scope: :s]}} =
               Transport.select(transport: :pg, pubsub: pubsub, transport_opts: [scope: :s])
    end

    test "a module is taken when it implements the behaviour" do
      assert {:ok, {MinimalTransport, [x: 1]}} =
               Transport.select(transport: MinimalTransport, transport_opts: [x: 1])

      assert {:ok, {Faulty, []}} = Transport.select(transport: Faulty)
      assert {:error, {:invalid_transport, String}} = Transport.select(transport: String)

      assert {:error, {:invalid_transport, NoSuchModule}} =
               Transport.select(transport: NoSuchModule)

      assert {:error, {:invalid_transport, "pg"}} = Transport.select(transport: "pg")
    end
  end

  describe "Faulty" do
    setup %{scope: scope} do
      %{inner: {PG, [scope: scope]}}
    end

    test "drop: 1.0 delivers nothing", %{inner: inner, topic: topic} do
      {:ok, s} = Faulty.start(inner: inner, drop: 1.0, duplicate: 1.0, reorder: 1.0)
      b = member(Faulty, s, topic, "b")

      for i <- 1..20 do
        :ok = Faulty.broadcast(s, topic, "b#{i}")
        :ok = Faulty.send_to(s, topic, "b", "s#{i}")
      end

      flush_member(b, "b")
      refute_received {:got, "b", _}

      assert %{messages: 40, dropped: 40, duplicated: 0, delayed: 0, delivered: 0} =
               Faulty.stats(s)
    end

    test "duplicate: 1.0 delivers twice", %{inner: inner, topic: topic} do
      {:ok, s} = Faulty.start(inner: inner, duplicate: 1.0)
      b = member(Faulty, s, topic, "b")

      :ok = Faulty.broadcast(s, topic, "twice")
      :ok = Faulty.send_to(s, topic, "b", "direct twice")

      flush_member(b, "b")
      assert {:messages, messages} = Process.info(self(), :messages)
      got = for {:got, "b", {:vsmcp_crdt_sync, ^topic, payload}} <- messages, do: payload
      assert Enum.sort(got) == ["direct twice", "direct twice", "twice", "twice"]

      assert %{messages: 2, dropped: 0, duplicated: 2, delayed: 0, delivered: 4} = Faulty.stats(s)
    end

    test "reorder: delayed messages all arrive, exactly once", %{inner: inner, topic: topic} do
      {:ok, s} = Faulty.start(inner: inner, reorder: 1.0, max_delay_ms: 20, seed: 7)
      :ok = Faulty.join(s, topic, "me")
      b = member(Faulty, s, topic, "b")
      payloads = for i <- 1..50, do: "m#{i}"

      for p <- payloads, do: :ok = Faulty.send_to(s, topic, "b", p)
      :ok = Faulty.broadcast(s, topic, "broadcast")

      Vsmcp.Test.Cluster.eventually(fn -> Faulty.stats(s).delivered == 51 end)
      flush_member(b, "b")
      assert {:messages, messages} = Process.info(self(), :messages)
      got = for {:got, "b", {:vsmcp_crdt_sync, ^topic, payload}} <- messages, do: payload
      assert Enum.sort(got) == Enum.sort(["broadcast" | payloads])
      # The delayed broadcast, sent from another process, still skipped us.
      refute_received {:vsmcp_crdt_sync, _, "broadcast"}
      assert %{messages: 51, delayed: 51, dropped: 0} = Faulty.stats(s)
    end

    test "the same seed faults the same messages", %{inner: inner, topic: topic} do
      stats =
        for _run <- 1..2 do
          {:ok, s} = Faulty.start(inner: inner, drop: 0.5, duplicate: 0.5, seed: 1234)
          _b = member(Faulty, s, topic, "b")
          for i <- 1..200, do: :ok = Faulty.send_to(s, topic, "b", "#{i}")
          Faulty.stats(s)
        end

      assert [same, same] = stats
      # Both faults happened, not every time.
      assert same.dropped in 50..150 and same.duplicated in 25..125
    end

    test "start/1 validates its options and starts the inner transport", %{inner: inner} do
      assert {:error, {:invalid_option, :inner, nil}} = Faulty.start(drop: 0.1)
      assert {:error, {:invalid_option, :drop, 1.5}} = Faulty.start(inner: inner, drop: 1.5)

      assert {:error, {:invalid_option, :max_delay_ms, -1}} =
               Faulty.start(inner: inner, max_delay_ms: -1)

      assert {:error, :pg_scope_not_running} =
               Faulty.start(inner: {PG, [scope: :vsmcp_no_such_scope]})

      assert {:error, {:inner_lacks_broadcast_from, MinimalTransport}} =
               Faulty.start(inner: {MinimalTransport, []}, reorder: 0.1)

      assert {:ok, _} = Faulty.start(inner: {MinimalTransport, []}, drop: 0.1)
    end
  end
end
