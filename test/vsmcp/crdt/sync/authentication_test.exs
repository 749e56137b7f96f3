defmodule Vsmcp.CRDT.Sync.AuthenticationTest do
  # `sync_opts: [secret: ...]` on real :peer nodes: stores sharing the
  # secret converge, a node with another secret (a forger) or none gets
  # nothing in and is counted, a secret is rotated by restarting stores
  # one at a time, and the secret never shows in a state dump or an error.
  use ExUnit.Case, async: true

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.Test.{Cluster, SyncNode}

  import Cluster, only: [eventually: 1, eventually: 2]

  @moduletag :cluster
  @moduletag timeout: 180_000

  @old "the old cluster secret, 32 bytes"
  @new "the new cluster secret, 32 bytes"
  @forged "a forger's guess at the secret!!"

  defp start_store(p, secret) do
    sync = [topic: "auth", heartbeat_interval: 100] ++ if(secret, do: [secret: secret], else: [])
    opts = [name: :s, storage_opts: [data_dir: Path.join(p.dir, "crdt")], sync_opts: sync]
    {:ok, _} = Cluster.call(p, SyncNode, :start_store, [opts])
  end

  defp restart_store(p, secret) do
    :ok = on(p, :stop, [])
    start_store(p, secret)
  end

  defp on(p, f, args), do: Cluster.call(p, ContextStore, f, [:s | args])
  defp unauthenticated(p), do: on(p, :sync_info, []).rejected.unauthenticated

  @tag :tmp_dir
  test "stores sharing a secret converge; a forger and a store without it get nothing in",
       %{tmp_dir: tmp_dir} do
    [a, b, forger, plain] = Cluster.start(4, tmp_dir: tmp_dir)
    start_store(a, @old)
    start_store(b, @old)
    start_store(forger, @forged)
    start_store(plain, nil)

    # b takes a's create by sync (a create of its own, concurrent with a's,
    # would make one of the two generations lose its adds); the outsiders
    # cannot have it and create their own.
    for p <- [a, forger, plain], do: :ok = on(p, :create, [:tags, :or_set])
    eventually(fn -> on(b, :get, [:tags]) == {:ok, MapSet.new()} end, 30_000)
    {:ok, _} = on(a, :add, [:tags, %{from: :a, at: {2026, 12, 7}}])
    {:ok, _} = on(b, :add, [:tags, "from b"])
    {:ok, _} = on(forger, :add, [:tags, "forged"])
    {:ok, _} = on(plain, :add, [:tags, "plain"])
    :ok = on(forger, :create, [:planted, :g_counter])

    expected = {:ok, MapSet.new([%{from: :a, at: {2026, 12, 7}}, "from b"])}

    eventually(
      fn -> on(a, :get, [:tags]) == expected and on(b, :get, [:tags]) == expected end,
      30_000
    )

    eventually(fn -> unauthenticated(a) > 5 and unauthenticated(b) > 5 end)
    for p <- [a, b], do: :ok = on(p, :sync, [])

    # After full anti-entropy rounds, still nothing of the outsiders.
    for p <- [a, b] do
      assert on(p, :get, [:tags]) == expected
      assert on(p, :get, [:planted]) == {:error, :not_found}
      assert [%{up: true}] = on(p, :sync_info, []).peers
    end

    assert on(forger, :get, [:tags]) == {:ok, MapSet.new(["forged"])}
    assert unauthenticated(forger) > 0
    assert on(plain, :get, [:tags]) == {:ok, MapSet.new(["plain"])}
    # The sealed hellos (one a second from each store with a secret) are
    # refused as malformed by the store without one; the first ones went
    # out before it joined.
    eventually(fn -> on(plain, :sync_info, []).rejected.malformed > 0 end)
  end

  @tag :tmp_dir
  test "a secret is rotated one store at a time, syncing throughout", %{tmp_dir: tmp_dir} do
    [a, b] = peers = Cluster.start(2, tmp_dir: tmp_dir)
    for p <- peers, do: start_store(p, @old)
    :ok = on(a, :create, [:hits, :pn_counter])
    eventually(fn -> on(b, :get, [:hits]) == {:ok, 0} end)

    # Accept the new secret everywhere, then sign with it, then drop the
    # old one; after each restart both stores still take each other's
    # writes.
    stages = [[@old, @new], [@new, @old], @new]

    writes =
      for {secret, s} <- Enum.with_index(stages), p <- peers, reduce: 0 do
        n ->
          restart_store(p, secret)
          {:ok, _} = on(p, :increment, [:hits, s + 1])
          total = n + s + 1
          eventually(fn -> Enum.all?(peers, &(on(&1, :get, [:hits]) == {:ok, total})) end)
          total
      end

    assert writes == 2 * (1 + 2 + 3)
    for p <- peers, do: assert(unauthenticated(p) == 0)
  end

  @tag :tmp_dir
  test "the secret shows in no state dump and no error", %{tmp_dir: tmp_dir} do
    [a] = Cluster.start(1, tmp_dir: tmp_dir)
    start_store(a, [@new, @old])
    store = Cluster.call(a, Process, :whereis, [:s])
    {:ok, peer} = Cluster.call(a, GenServer, :call, [store, :peer])

    for pid <- [store, peer] do
      dump = inspect(Cluster.call(a, :sys, :get_state, [pid]), limit: :infinity)
      refute dump =~ @new
      refute dump =~ @old
    end

    dir = Path.join(tmp_dir, "bad")

    for bad <- ["too short", [@new, 42], [], List.duplicate(@new, 5), :secret] do
      assert ContextStore.start_link(storage_opts: [data_dir: dir], sync_opts: [secret: bad]) ==
               {:error, {:invalid_option, {:sync_opts, :secret}, :redacted}}
    end

    # Misplaced or misspelt, or in options that are not a keyword list.
    for opts <- [
          [sync_opts: [secrets: @new]],
          [secret: @new],
          [sync_opts: [{:secret, @new}, :junk]],
          [:junk, sync_opts: [secret: @new]]
        ] do
      assert {:error, reason} = ContextStore.start_link([storage_opts: [data_dir: dir]] ++ opts)
      refute inspect(reason, limit: :infinity) =~ @new
    end

    # The default store's supervisor keeps its options (a child spec, its
    # own arguments): a function stands for the secret there too, whether
    # it came from the application environment or the arguments.
    [b] = Cluster.start(1, tmp_dir: Path.join(tmp_dir, "sup"))

    :ok =
      Cluster.call(b, Application, :put_env, [:vsmcp, ContextStore, [sync_opts: [secret: @old]]])

    data = Path.join(b.dir, "default")

    {:ok, sup} =
      Cluster.call(b, SyncNode, :start_default, [
        [storage_opts: [data_dir: data], sync_opts: [secret: [@new, @old]]]
      ])

    children = Cluster.call(b, Supervisor, :which_children, [sup])

    for pid <- [sup | Enum.map(children, &elem(&1, 1))] do
      dump = inspect(Cluster.call(b, :sys, :get_state, [pid]), limit: :infinity)
      refute dump =~ @new
      refute dump =~ @old
    end

    assert %{enabled: true} = Cluster.call(b, ContextStore, :sync_info, [])
  end
end
