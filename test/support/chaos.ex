defmodule Vsmcp.Test.Chaos do
  @moduledoc """
  A seeded chaos campaign on real `:peer` nodes (issue 16): the test
  `test/vsmcp/crdt/sync/chaos_test.exs` runs a few seeds, `bench/chaos.exs`
  a long campaign.

      report = Vsmcp.Test.Chaos.run(42, tmp_dir: tmp)
      report.failures   # [] when every check held

  ## What one seed does

  The seed fixes the *schedule*: the number of nodes (3 to 5), each node's
  durability (node 0 `:strict`, node 1 `:relaxed`, the others drawn), each
  node's `Vsmcp.CRDT.Sync.Transport.Faulty` rates (drop, duplicate,
  delay/reorder around `Vsmcp.CRDT.Sync.Transport.PubSub`), the list of
  fault steps, and every worker's sequence of operations. Timing is real,
  so a replay repeats the same schedule, not the same interleaving.

  Each node is a host application the way VSMCP runs one: `Vsmcp.PubSub`
  (Phoenix.PubSub) plus `Vsmcp.CRDT.Supervisor`, configured through the
  application environment, the default store syncing on its default topic.

  Workers (`:workers` per node, processes of the runner each calling the
  node through `:peer`) issue operations on every type: shared ids
  (`{:shared, type}`, written by every node) and ids each worker owns
  (created, updated, deleted and re-created), with maps, tuples and strings
  as values. Every reply is recorded with its time.

  Fault steps: `kill` (SIGKILL of the node's OS process, `Cluster.kill9/1`)
  and `restart` on the same data directory; `partition` (two groups) and
  `partial` (one pair cut, the rest connected), then `heal`; `skew` of a
  node's store clock beyond `max_clock_offset` (`ContextStore.inject_clock_skew/1`)
  and `unskew`; `fail_writes`/`recover_writes` (the cold tier refuses
  writes like a full disk); `leave` (the last node syncs, stops for good
  and is forgotten with `forget_replica/2` everywhere); `backup` of node 0
  and, later, `restore` of it as a new node (a new replica).

  ## The checks

  After the faults stop (partitions healed, killed nodes restarted, clocks
  fixed, disks writable), every live node must hold the same ids and values
  within `:converge_ms`, and that state must agree with the recorded
  replies. An operation is *certain* unless its reply never came (the node
  died or the call timed out) or it was acknowledged by a `:relaxed` node
  less than `:loss_window_ms` before that node was killed (the loss the
  storage guide allows).

    * counters: the value lies within the certain sum plus or minus the
      uncertain amounts (exactly the sum with `:strict` and no lost reply);
    * an element with a single writer (sequential adds and removes, each
      acknowledged before the next): present iff its last operation was an
      add, when all its operations are certain; every element present was
      added by someone;
    * a register holds the last value written by some worker (or a value
      whose write is uncertain);
    * an owned id with certain operations holds exactly what they imply; an
      id whose last certain operation was a delete is absent everywhere
      (no deleted id comes back, after kills, leaving, or a restore).

  A worker whose reply was lost, or whose reply contradicts its own model
  (an anomaly, reported as a failure), moves on to fresh ids.

  On failure the report holds the seed and the last 30 steps (`format/1`).
  """

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.Sync.Transport
  alias Vsmcp.Test.Cluster

  @types [:g_counter, :pn_counter, :or_set, :aw_set, :lww_register]
  @store ContextStore

  # ---------------------------------------------------------------------------
  # Schedule

  @doc """
  The schedule of `seed`: `%{nodes:, durability:, transport:, steps:}`,
  `steps` a list of `{pause_ms, action}`. A pure function of the seed and
  `opts` (`:nodes`, `:steps`, `:step_ms`).
  """
  def schedule(seed, opts \\ []) do
    rand = :rand.seed_s(:exsss, {seed, 0xC4A05, 16})
    {k, rand} = :rand.uniform_s(3, rand)
    n = Keyword.get(opts, :nodes) || 2 + k

    {durability, rand} =
      Enum.map_reduce(0..(n - 1), rand, fn
        0, r ->
          {:strict, r}

        1, r ->
          {:relaxed, r}

        _, r ->
          {x, r} = :rand.uniform_s(r)
          {if(x < 0.5, do: :strict, else: :relaxed), r}
      end)

    {transport, rand} =
      Enum.map_reduce(0..(n - 1), rand, fn i, r ->
        {[d, u, o], r} = draws(r, 3)
        {delay, r} = :rand.uniform_s(31, r)

        {[
           drop: Float.round(d * 0.15, 3),
           duplicate: Float.round(u * 0.15, 3),
           reorder: Float.round(o * 0.3, 3),
           max_delay_ms: delay - 1,
           seed: seed * 100 + i
         ], r}
      end)

    state = %{
      n: n,
      up: MapSet.new(0..(n - 1)),
      down: MapSet.new(),
      left: nil,
      cuts: MapSet.new(),
      skewed: MapSet.new(),
      failing: MapSet.new(),
      backup: nil,
      restored: false,
      step: 0
    }

    step_ms = Keyword.get(opts, :step_ms, 500)

    {steps, _} =
      Enum.map_reduce(1..Keyword.get(opts, :steps, 16), {state, rand}, fn _, {st, r} ->
        {pause, r} = :rand.uniform_s(step_ms, r)
        {action, r} = pick(candidates(st), r)
        {{div(step_ms, 2) + pause, action}, {advance(st, action), r}}
      end)

    %{nodes: n, durability: durability, transport: transport, steps: steps}
  end

  defp draws(r, k), do: Enum.map_reduce(1..k, r, fn _, r -> :rand.uniform_s(r) end)

  defp pick(weighted, r) do
    total = weighted |> Enum.map(&elem(&1, 0)) |> Enum.sum()
    {x, r} = :rand.uniform_s(total, r)

    action =
      Enum.reduce_while(weighted, x, fn {w, a}, left ->
        if left <= w, do: {:halt, a}, else: {:cont, left - w}
      end)

    resolve(action, r)
  end

  # Actions whose arguments are drawn once chosen.
  defp resolve({:partition, members}, r) do
    {shuffled, r} = shuffle(members, r)
    {k, r} = :rand.uniform_s(length(members) - 1, r)
    {a, b} = Enum.split(shuffled, k)
    {{:partition, Enum.sort(a), Enum.sort(b)}, r}
  end

  defp resolve({:skew, i}, r) do
    {ms, r} = :rand.uniform_s(800, r)
    {sign, r} = :rand.uniform_s(2, r)
    {{:skew, i, if(sign == 1, do: 700 + ms, else: -(700 + ms))}, r}
  end

  defp resolve(action, r), do: {action, r}

  defp shuffle(list, r) do
    {keyed, r} =
      Enum.map_reduce(list, r, fn x, r ->
        {u, r} = :rand.uniform_s(r)
        {{u, x}, r}
      end)

    {keyed |> Enum.sort() |> Enum.map(&elem(&1, 1)), r}
  end

  defp members(st), do: MapSet.to_list(st.up) ++ if(st.restored, do: [:r], else: [])

  defp candidates(st) do
    up = MapSet.to_list(st.up)
    members = members(st)

    pairs = for a <- members, b <- members, a < b, not MapSet.member?(st.cuts, {a, b}), do: {a, b}

    List.flatten([
      for(i <- up, length(up) >= 2, not MapSet.member?(st.failing, i), do: {3, {:kill, i}}),
      for(i <- st.down, do: {5, {:restart, i}}),
      if(MapSet.size(st.cuts) == 0 and length(members) >= 2,
        do: [{2, {:partition, members}}],
        else: []
      ),
      if(length(members) >= 3,
        do: Enum.map(pairs, &{1, {:partial, elem(&1, 0), elem(&1, 1)}}),
        else: []
      ),
      if(MapSet.size(st.cuts) > 0, do: [{3, :heal}], else: []),
      if(MapSet.size(st.skewed) == 0, do: Enum.map(up, &{1, {:skew, &1}}), else: []),
      Enum.map(st.skewed, &{3, {:unskew, &1}}),
      if(MapSet.size(st.failing) == 0, do: Enum.map(up, &{1, {:fail_writes, &1}}), else: []),
      Enum.map(st.failing, &{3, {:recover_writes, &1}}),
      # A node leaves only when another one can take its data over.
      if(
        st.left == nil and st.n >= 3 and st.step >= 3 and MapSet.member?(st.up, st.n - 1) and
          MapSet.size(st.failing) == 0 and MapSet.size(st.up) >= 2,
        do: [{2, {:leave, st.n - 1}}],
        else: []
      ),
      if(st.backup == nil and MapSet.member?(st.up, 0) and not MapSet.member?(st.failing, 0),
        do: [{2, {:backup, 0}}],
        else: []
      ),
      if(is_integer(st.backup) and not st.restored and st.step - st.backup >= 2,
        do: [{3, :restore}],
        else: []
      )
    ])
  end

  defp advance(st, action) do
    st = %{st | step: st.step + 1}

    case action do
      {:kill, i} ->
        %{
          st
          | up: MapSet.delete(st.up, i),
            down: MapSet.put(st.down, i),
            skewed: MapSet.delete(st.skewed, i)
        }

      {:restart, i} ->
        %{st | up: MapSet.put(st.up, i), down: MapSet.delete(st.down, i)}

      {:partition, a, b} ->
        %{st | cuts: MapSet.new(for x <- a, y <- b, do: {min(x, y), max(x, y)})}

      {:partial, a, b} ->
        %{st | cuts: MapSet.put(st.cuts, {a, b})}

      :heal ->
        %{st | cuts: MapSet.new()}

      {:skew, i, _} ->
        %{st | skewed: MapSet.put(st.skewed, i)}

      {:unskew, i} ->
        %{st | skewed: MapSet.delete(st.skewed, i)}

      {:fail_writes, i} ->
        %{st | failing: MapSet.put(st.failing, i)}

      {:recover_writes, i} ->
        %{st | failing: MapSet.delete(st.failing, i)}

      {:leave, i} ->
        %{
          st
          | up: MapSet.delete(st.up, i),
            left: i,
            skewed: MapSet.delete(st.skewed, i),
            cuts: MapSet.reject(st.cuts, fn {a, b} -> a == i or b == i end)
        }

      {:backup, _} ->
        %{st | backup: st.step}

      :restore ->
        %{st | restored: true}
    end
  end

  # ---------------------------------------------------------------------------
  # Running a seed

  @doc """
  Runs `seed` and returns its report: `%{seed:, nodes:, failures:,
  faults:, losses:, ops:, duration_ms:, trace:, transport:}`.

  Options: `:tmp_dir` (required), `:nodes`, `:steps` (16), `:step_ms`
  (500), `:workers` per node (3), `:loss_window_ms` (250),
  `:converge_ms` (60_000), `:load` (modules for the nodes, from a script),
  `:log` (a function of a string, for progress).
  """
  def run(seed, opts) do
    t0 = System.monotonic_time(:millisecond)
    sched = schedule(seed, opts)
    tmp = Path.join(Keyword.fetch!(opts, :tmp_dir), "seed_#{seed}")
    File.rm_rf!(tmp)
    File.mkdir_p!(tmp)
    ops = :ets.new(:chaos_ops, [:public, :set, write_concurrency: true])
    nodes = :ets.new(:chaos_nodes, [:public, :set, read_concurrency: true])
    ctx = %{seed: seed, sched: sched, tmp: tmp, ops: ops, nodes: nodes, opts: opts, t0: t0}

    st = %{
      ctx: ctx,
      peers: %{},
      old: %{},
      cuts: MapSet.new(),
      skewed: %{},
      failing: MapSet.new(),
      pending_forget: MapSet.new(),
      kills: [],
      faults: %{},
      trace: [],
      workers: %{},
      left_key: nil,
      backup: nil,
      cookie: nil,
      failures: [],
      transport: %{messages: 0, dropped: 0, duplicated: 0, delayed: 0}
    }

    Process.delete(:chaos_state)

    st =
      try do
        st
        |> keep()
        |> boot()
        |> start_workers()
        |> run_steps()
        |> quiesce()
        |> check()
      rescue
        e ->
          fail(
            st_from_process(st),
            "harness error: " <> Exception.format(:error, e, __STACKTRACE__)
          )
      catch
        kind, reason ->
          fail(st_from_process(st), "harness #{kind}: #{inspect(reason)}")
      end

    st = st_from_process(st)
    # Workers stop before the tables they write go.
    :ets.insert(nodes, {:stop, true})
    st.workers |> Map.values() |> List.flatten() |> Enum.each(&await_exit/1)
    stop_all(st)
    report = report(st, System.monotonic_time(:millisecond) - t0)
    :ets.delete(ops)
    :ets.delete(nodes)
    if report.failures == [], do: File.rm_rf(tmp)
    report
  end

  # The latest state, kept in the process dictionary by each stage so that
  # a failure half-way still reports (and stops) what it had.
  defp st_from_process(st), do: Process.get(:chaos_state, st)

  defp keep(st) do
    Process.put(:chaos_state, st)
    st
  end

  defp boot(st) do
    %{sched: sched, tmp: tmp} = st.ctx
    cookie = "chaos_#{st.ctx.seed}_#{System.unique_integer([:positive])}"

    handles =
      Cluster.start(sched.nodes,
        tmp_dir: tmp,
        cleanup: :manual,
        cookie: cookie,
        prefix: "chaos",
        pubsub: Vsmcp.PubSub,
        load: Keyword.get(st.ctx.opts, :load, []),
        app_env: fn p ->
          app_env(p.dir, Enum.at(sched.durability, p.index), Enum.at(sched.transport, p.index))
        end
      )

    st = %{st | cookie: cookie}

    st =
      Enum.reduce(handles, st, fn h, st ->
        :ok = Cluster.call(h, __MODULE__, :start_host, [])
        :ets.insert(st.ctx.nodes, {h.index, h})
        %{st | peers: Map.put(st.peers, h.index, h)}
      end)

    # The shared ids, created once and seen everywhere before the faults.
    h0 = st.peers[0]
    for t <- @types, do: :ok = Cluster.call(h0, ContextStore, :create, [@store, {:shared, t}, t])

    Cluster.eventually(
      fn ->
        Enum.all?(Map.values(st.peers), fn h ->
          ids = Cluster.call(h, ContextStore, :list_crdts, [@store])
          Enum.all?(@types, &({:shared, &1} in ids))
        end)
      end,
      30_000
    )

    keep(trace(st, :boot, "#{sched.nodes} nodes #{inspect(sched.durability)}"))
  end

  defp app_env(dir, durability, faulty) do
    store = [
      durability: durability,
      storage_opts: [data_dir: Path.join(dir, "crdt")],
      sync_opts: [
        transport: Transport.Faulty,
        transport_opts: [inner: {Transport.PubSub, [pubsub: Vsmcp.PubSub]}] ++ faulty,
        heartbeat_interval: 200,
        down_after: 1_000,
        retransmit_interval: 50
      ]
    ]

    [{:vsmcp_crdt, ContextStore, store}, {:logger, :level, :error}]
  end

  @doc false
  # Runs on a node: the host application's supervisor of the default store
  # (Phoenix.PubSub is started by Cluster), outliving the :peer call.
  def start_host do
    {:ok, pid} = Vsmcp.CRDT.Supervisor.start_link([])
    Process.unlink(pid)
    :ok
  end

  @doc false
  # Runs on a node: every id of the default store with its value.
  def dump do
    case ContextStore.list_crdts(@store) do
      ids when is_list(ids) ->
        for id <- ids, {:ok, v} <- [ContextStore.get(@store, id)], into: %{}, do: {id, v}

      other ->
        {:error, other}
    end
  end

  defp run_steps(st) do
    Enum.reduce(st.ctx.sched.steps, st, fn {pause, action}, st ->
      # The pause is the schedule's spacing of faults under load.
      Process.sleep(pause)
      st = st |> apply_fault(action) |> count(action)
      keep(trace(st, action, ""))
    end)
  end

  defp count(st, action) do
    kind = if is_atom(action), do: action, else: elem(action, 0)
    %{st | faults: Map.update(st.faults, kind, 1, &(&1 + 1))}
  end

  defp apply_fault(st, {:kill, i}) do
    h = st.peers[i]
    st = collect_transport(st, h)
    :ets.insert(st.ctx.nodes, {i, :down})
    t = now()
    Cluster.kill9(h)
    durability = Enum.at(st.ctx.sched.durability, i)

    %{
      st
      | peers: Map.delete(st.peers, i),
        old: Map.put(st.old, i, h),
        kills: [%{node: i, t: t, durability: durability} | st.kills],
        skewed: Map.delete(st.skewed, i)
    }
  end

  defp apply_fault(st, {:restart, i}), do: restart(st, i)

  defp apply_fault(st, {:partition, a, b}) do
    Cluster.partition(handles(st, a), handles(st, b))
    %{st | cuts: MapSet.new(for x <- a, y <- b, do: pair(x, y))}
  end

  defp apply_fault(st, {:partial, a, b}) do
    Cluster.partition(handles(st, [a]), handles(st, [b]))
    %{st | cuts: MapSet.put(st.cuts, pair(a, b))}
  end

  defp apply_fault(st, :heal), do: heal(st)

  defp apply_fault(st, {:skew, i, ms}) do
    :ok = Cluster.call(st.peers[i], ContextStore, :inject_clock_skew, [ms])
    %{st | skewed: Map.put(st.skewed, i, ms)}
  end

  defp apply_fault(st, {:unskew, i}) do
    if h = st.peers[i], do: :ok = Cluster.call(h, ContextStore, :inject_clock_skew, [0])
    %{st | skewed: Map.delete(st.skewed, i)}
  end

  defp apply_fault(st, {:fail_writes, i}) do
    :ok = Cluster.call(st.peers[i], ContextStore, :inject_write_failure, [@store, true])
    %{st | failing: MapSet.put(st.failing, i)}
  end

  defp apply_fault(st, {:recover_writes, i}) do
    :ok = Cluster.call(st.peers[i], ContextStore, :inject_write_failure, [@store, false])
    st = %{st | failing: MapSet.delete(st.failing, i)}
    if MapSet.member?(st.pending_forget, i), do: forget(st, i), else: st
  end

  defp apply_fault(st, {:leave, i}) do
    h = st.peers[i]
    # An orderly leave: its workers stop, its clock is fixed (entries
    # stamped beyond the others' clocks would wait for them), and every
    # other node that can write pulls what it has (sync/2 returns once the
    # caller holds everything its peers had) before it goes for good.
    :ets.insert(st.ctx.nodes, {i, :left})
    Enum.each(Map.get(st.workers, i, []), &await_exit/1)
    st = heal_node(st, i)

    st =
      case Map.fetch(st.skewed, i) do
        {:ok, ms} ->
          st = apply_fault(st, {:unskew, i})
          # Until its real clock passes the stamps it made while ahead.
          Process.sleep(abs(ms) + 100)
          st

        :error ->
          st
      end

    key = Cluster.call(h, ContextStore, :sync_info, [@store]).replica

    takers = for {k, other} <- st.peers, k != i, not MapSet.member?(st.failing, k), do: other
    if takers == [], do: raise("#{i} cannot leave: no node can take its data over")

    for other <- takers do
      Cluster.eventually(
        fn ->
          info = Cluster.call(other, ContextStore, :sync_info, [@store])
          up? = Enum.any?(info.peers, &(&1.key == key and &1.up))
          up? and Cluster.call(other, ContextStore, :sync, [@store, 3_000], 10_000) == :ok
        end,
        30_000
      )
    end

    st = collect_transport(st, h)
    Cluster.stop(h)
    st = %{st | peers: Map.delete(st.peers, i), left_key: key}
    Enum.reduce(Map.keys(st.peers), st, &forget(&2, &1))
  end

  defp apply_fault(st, {:backup, i}) do
    dir = Path.join(st.ctx.tmp, "backup_of_#{i}")

    case Cluster.call(st.peers[i], ContextStore, :backup, [@store, dir], 30_000) do
      :ok -> %{st | backup: dir}
      other -> trace(st, :backup_failed, inspect(other))
    end
  end

  defp apply_fault(%{backup: nil} = st, :restore), do: st

  defp apply_fault(st, :restore) do
    [h] =
      Cluster.start(1,
        tmp_dir: st.ctx.tmp,
        cleanup: :manual,
        cookie: st.cookie,
        connect: false,
        prefix: "chaos_restored",
        pubsub: Vsmcp.PubSub,
        load: Keyword.get(st.ctx.opts, :load, []),
        app_env: fn _ ->
          app_env(st.backup, :strict, seed: st.ctx.seed * 100 + 99, drop: 0.05, duplicate: 0.05)
          |> put_data_dir(st.backup)
        end
      )

    for {k, other} <- st.peers,
        not MapSet.member?(st.cuts, pair(k, :r)),
        do: Cluster.connect(h, other)

    :ok = Cluster.call(h, __MODULE__, :start_host, [])
    forget(%{st | peers: Map.put(st.peers, :r, h)}, :r)
  end

  defp put_data_dir([{:vsmcp_crdt, ContextStore, store} | rest], dir) do
    [{:vsmcp_crdt, ContextStore, put_in(store, [:storage_opts, :data_dir], dir)} | rest]
  end

  # forget_replica/2 on node `k`; retried once its disk takes writes again
  # when it cannot be written now.
  defp forget(%{left_key: nil} = st, _k), do: st

  defp forget(st, k) do
    case Cluster.call(st.peers[k], ContextStore, :forget_replica, [@store, st.left_key]) do
      :ok -> %{st | pending_forget: MapSet.delete(st.pending_forget, k)}
      # A node that never met the one that left.
      {:error, :invalid_replica} -> %{st | pending_forget: MapSet.delete(st.pending_forget, k)}
      {:error, {:storage_error, _}} -> %{st | pending_forget: MapSet.put(st.pending_forget, k)}
    end
  end

  defp restart(st, i) do
    connect_to = for {k, h} <- st.peers, not MapSet.member?(st.cuts, pair(i, k)), do: h
    h = Cluster.restart(st.old[i], connect_to: connect_to)
    :ok = Cluster.call(h, __MODULE__, :start_host, [])
    :ets.insert(st.ctx.nodes, {i, h})
    forget(%{st | peers: Map.put(st.peers, i, h), old: Map.delete(st.old, i)}, i)
  end

  defp heal(st) do
    for {a, b} <- st.cuts, ha = st.peers[a], hb = st.peers[b], do: Cluster.connect(ha, hb)
    %{st | cuts: MapSet.new()}
  end

  defp heal_node(st, i) do
    for {a, b} <- st.cuts, a == i or b == i, ha = st.peers[a], hb = st.peers[b] do
      Cluster.connect(ha, hb)
    end

    %{st | cuts: MapSet.reject(st.cuts, fn {a, b} -> a == i or b == i end)}
  end

  defp handles(st, keys), do: for(k <- keys, h = st.peers[k], do: h)

  # Pairs are ordered as the schedule orders them (integers before :r).
  defp pair(a, b), do: {min(a, b), max(a, b)}

  defp collect_transport(st, h) do
    case safe_call(h, ContextStore, :sync_info, [@store]) do
      %{transport_stats: %{} = s} ->
        %{
          st
          | transport:
              Map.merge(st.transport, Map.take(s, Map.keys(st.transport)), fn _, a, b -> a + b end)
        }

      _ ->
        st
    end
  end

  defp safe_call(h, m, f, a, timeout \\ 10_000) do
    Cluster.call(h, m, f, a, timeout)
  catch
    _, _ -> :unknown
  end

  # Faults stop: workers stop, partitions heal, killed nodes restart,
  # clocks and disks are fixed; then every live node must converge.
  defp quiesce(st) do
    :ets.insert(st.ctx.nodes, {:stop, true})
    st.workers |> Map.values() |> List.flatten() |> Enum.each(&await_exit/1)
    st = Enum.reduce(st.failing, st, &apply_fault(&2, {:recover_writes, &1}))
    st = Enum.reduce(Map.keys(st.skewed), st, &apply_fault(&2, {:unskew, &1}))
    st = Enum.reduce(Map.keys(st.old), st, &restart(&2, &1))
    st = heal(st)
    keep(trace(st, :quiesced, "live #{inspect(Map.keys(st.peers))}"))
  end

  # ---------------------------------------------------------------------------
  # Workers

  defp start_workers(st) do
    n = Keyword.get(st.ctx.opts, :workers, 3)

    workers =
      for {i, _} <- st.peers, into: %{} do
        {i, for(w <- 1..n, do: spawn(fn -> worker(st.ctx, i, w) end))}
      end

    keep(%{st | workers: workers})
  end

  defp await_exit(pid) do
    ref = Process.monitor(pid)

    receive do
      {:DOWN, ^ref, _, _, :normal} -> :ok
      {:DOWN, ^ref, _, _, :noproc} -> :ok
      {:DOWN, ^ref, _, _, reason} -> raise "worker crashed: #{inspect(reason, limit: 30)}"
    after
      30_000 -> raise "worker #{inspect(pid)} did not stop"
    end
  end

  defp worker(ctx, node, w) do
    rand = :rand.seed_s(:exsss, {ctx.seed, node, w})
    loop(ctx, %{node: node, w: w, rand: rand, gen: 0, seq: 0, slots: %{}, own: %{}})
  end

  defp loop(ctx, ws) do
    case {:ets.lookup(ctx.nodes, :stop), :ets.lookup(ctx.nodes, ws.node)} do
      {[{:stop, true}], _} ->
        :ok

      {_, [{_, :left}]} ->
        :ok

      {_, [{_, :down}]} ->
        # Waiting for the node's restart.
        Process.sleep(20)
        loop(ctx, ws)

      {_, [{_, h}]} ->
        {{id, f, args}, ws} = next_op(ws)
        t0 = now()
        res = perform(h, f, [id | args])
        ws = %{ws | seq: ws.seq + 1}

        :ets.insert(
          ctx.ops,
          {{ws.node, ws.w, ws.seq},
           %{id: id, f: f, args: args, res: res, t0: t0, t1: now(), gen: ws.gen}}
        )

        ws = after_op(ws, id, f, args, res)
        {pause, rand} = :rand.uniform_s(4, ws.rand)
        # Pacing: a few ms between operations, as an application would.
        Process.sleep(pause)
        loop(ctx, %{ws | rand: rand})
    end
  end

  defp perform(h, f, args) do
    case Cluster.call(h, ContextStore, f, [@store | args], 5_000) do
      :ok -> :ok
      {:ok, _} -> :ok
      {:error, {:storage_error, _}} -> :failed
      {:error, reason} -> {:error, reason}
    end
  catch
    _, _ -> :unknown
  end

  defp next_op(ws) do
    {x, r} = :rand.uniform_s(100, ws.rand)
    {y, r} = :rand.uniform_s(1_000, r)
    ws = %{ws | rand: r}

    cond do
      x <= 25 ->
        if rem(y, 2) == 0,
          do: {{{:shared, :g_counter}, :increment, [rem(y, 5) + 1]}, ws},
          else:
            {{{:shared, :pn_counter}, pick_of([:increment, :decrement], y), [rem(y, 7) + 1]}, ws}

      x <= 45 ->
        set = pick_of([{:shared, :or_set}, {:shared, :aw_set}], y)

        if rem(y, 10) == 0 do
          {{set, pick_of([:add, :remove], div(y, 10)), ["hot-#{rem(y, 3)}"]}, ws}
        else
          e = own_element(ws, rem(div(y, 2), 6))
          f = if Map.get(ws.own, {set, e}, false), do: :remove, else: :add
          {{set, f, [e]}, ws}
        end

      x <= 55 ->
        {{{:shared, :lww_register}, :set, [value(ws, y)]}, ws}

      true ->
        k = rem(y, slots(ws))
        id = owned_id(ws, k)
        type = slot_type(ws, k)

        case Map.get(ws.slots, k) do
          nil ->
            {{id, :create, [type]}, ws}

          _ when rem(y, 9) == 0 ->
            {{id, :delete, []}, ws}

          elems ->
            {f, args} = owned_op(type, elems, y, ws)
            {{id, f, args}, ws}
        end
    end
  end

  defp slots(_ws), do: 2

  defp owned_op(type, elems, y, ws) do
    case type do
      :g_counter ->
        {:increment, [rem(y, 3) + 1]}

      :pn_counter ->
        {pick_of([:increment, :decrement], y), [rem(y, 4) + 1]}

      set when set in [:or_set, :aw_set] ->
        e = "tag-#{rem(div(y, 2), 4)}"
        {if(MapSet.member?(elems, e), do: :remove, else: :add), [e]}

      :lww_register ->
        {:set, [value(ws, y)]}
    end
  end

  defp pick_of(list, y), do: Enum.at(list, rem(y, length(list)))

  defp own_element(ws, e) do
    if rem(e, 2) == 0,
      do: %{"node" => ws.node, "worker" => ws.w, "gen" => ws.gen, "e" => e},
      else: {:element, ws.node, ws.w, ws.gen, e}
  end

  defp value(ws, y) do
    case rem(y, 3) do
      0 -> %{"user_id" => y, "by" => {ws.node, ws.w}, "seq" => ws.seq, "tags" => ["a", "b"]}
      1 -> {:session, ws.node, ws.w, ws.seq, "token-#{y}"}
      2 -> "note #{ws.node}/#{ws.w}/#{ws.seq}"
    end
  end

  defp owned_id(ws, 0), do: {:own, ws.node, ws.w, 0, ws.gen}
  defp owned_id(ws, k), do: "ctx:#{ws.node}:#{ws.w}:#{k}:#{ws.gen}"

  defp slot_type(ws, k), do: Enum.at(@types, rem((ws.w - 1) * 2 + k + ws.node, 5))

  # The worker's model follows what it was told; a lost reply or a reply
  # its model did not expect makes it move on to fresh ids.
  defp after_op(ws, _id, _f, _args, :failed), do: ws

  defp after_op(ws, _id, _f, _args, res) when res != :ok,
    do: %{ws | gen: ws.gen + 1, slots: %{}, own: %{}}

  defp after_op(ws, {:shared, set} = id, f, [e], :ok) when set in [:or_set, :aw_set] do
    if is_binary(e), do: ws, else: %{ws | own: Map.put(ws.own, {id, e}, f == :add)}
  end

  defp after_op(ws, {:shared, _}, _f, _args, :ok), do: ws

  defp after_op(ws, id, f, args, :ok) do
    k = slot_of(id)

    case {f, args} do
      {:create, _} -> %{ws | slots: Map.put(ws.slots, k, MapSet.new())}
      {:delete, _} -> %{ws | slots: Map.delete(ws.slots, k)}
      {:add, [e]} -> %{ws | slots: Map.update!(ws.slots, k, &MapSet.put(&1, e))}
      {:remove, [e]} -> %{ws | slots: Map.update!(ws.slots, k, &MapSet.delete(&1, e))}
      _ -> ws
    end
  end

  defp slot_of({:own, _, _, k, _}), do: k
  defp slot_of("ctx:" <> rest), do: rest |> String.split(":") |> Enum.at(2) |> String.to_integer()

  # ---------------------------------------------------------------------------
  # Checks

  defp check(st) do
    converge_ms = Keyword.get(st.ctx.opts, :converge_ms, 60_000)
    live = Map.values(st.peers)

    converged =
      try do
        Cluster.eventually(
          fn ->
            dumps = Enum.map(live, &safe_call(&1, __MODULE__, :dump, [], 30_000))

            if Enum.all?(dumps, &is_map/1) and length(Enum.uniq(dumps)) == 1 do
              {:ok, hd(dumps)}
            else
              # Anti-entropy rounds speed the last steps up.
              Enum.each(live, &safe_call(&1, ContextStore, :sync, [@store, 1_000]))
              false
            end
          end,
          converge_ms
        )
      rescue
        _ -> {:diverged, Enum.map(live, &{&1.node, safe_call(&1, __MODULE__, :dump, [], 30_000)})}
      end

    st = Enum.reduce(live, st, &collect_transport(&2, &1))

    case converged do
      {:ok, dump} ->
        st = keep(trace(st, :converged, "#{map_size(dump)} ids"))
        st |> check_semantics(dump) |> check_forgetting(live)

      {:diverged, dumps} ->
        fail(st, "not converged after #{converge_ms} ms: " <> divergence(dumps))
    end
  end

  defp anomaly(op, reason) do
    "anomaly: #{inspect(op.f)} #{inspect(op.id)} #{inspect(op.args)} on node #{op.node} answered #{inspect(reason)}"
  end

  defp divergence([{n0, d0} | rest]) do
    Enum.map_join(rest, "; ", fn {n, d} ->
      if is_map(d0) and is_map(d) do
        diff =
          for id <- Enum.uniq(Map.keys(d0) ++ Map.keys(d)),
              Map.get(d0, id) != Map.get(d, id),
              do: {id, Map.get(d0, id, :absent), Map.get(d, id, :absent)}

        "#{n0} vs #{n}: #{length(diff)} ids differ, e.g. #{inspect(Enum.take(diff, 3), limit: 20)}"
      else
        "#{n0}: #{inspect(d0, limit: 5)} #{n}: #{inspect(d, limit: 5)}"
      end
    end)
  end

  defp check_semantics(st, dump) do
    window = Keyword.get(st.ctx.opts, :loss_window_ms, 250)
    relaxed_kills = Enum.filter(st.kills, &(&1.durability == :relaxed))

    ops =
      st.ctx.ops
      |> :ets.tab2list()
      |> Enum.sort()
      |> Enum.map(fn {{node, w, seq}, op} ->
        Map.merge(op, %{
          node: node,
          w: w,
          seq: seq,
          certain: certain?(op, node, relaxed_kills, window)
        })
      end)

    by_id = Enum.group_by(ops, & &1.id)

    failures =
      Enum.flat_map(ops, fn
        %{res: {:error, :not_found}} = op when is_map_key(by_id, op.id) ->
          # Not an anomaly when an earlier operation of this worker on the
          # id (its create) was uncertain: a relaxed node may lose what it
          # acknowledged just before a kill (campaign seed 32).
          if Enum.any?(
               by_id[op.id],
               &(&1.node == op.node and &1.w == op.w and &1.seq < op.seq and not &1.certain)
             ),
             do: [],
             else: [anomaly(op, :not_found)]

        %{res: {:error, reason}} = op ->
          [anomaly(op, reason)]

        _ ->
          []
      end)

    failures =
      failures ++
        check_counters(by_id, dump) ++
        check_sets(by_id, dump) ++
        check_register(by_id, dump) ++
        check_owned(by_id, dump)

    st = %{st | failures: st.failures ++ failures}
    losses = measure_losses(st, by_id, dump, window)
    keep(Map.put(st, :losses, losses) |> Map.put(:ops_count, length(ops)))
  end

  # Once every live node has forgotten the node that left and all are
  # connected, the forgetting settles everywhere (sync guide, "A forgotten
  # member").
  defp check_forgetting(%{left_key: nil} = st, _live), do: st

  defp check_forgetting(st, live) do
    Enum.reduce(live, st, fn h, st ->
      try do
        Cluster.eventually(
          fn -> Cluster.call(h, ContextStore, :sync_info, [@store]).forgetting == [] end,
          30_000
        )

        st
      rescue
        _ ->
          held = safe_call(h, ContextStore, :sync_info, [@store])
          held = if is_map(held), do: held.forgetting, else: held
          fail(st, "forgetting not settled on #{h.node} after 30 s: #{inspect(held)}")
      end
    end)
  end

  defp certain?(%{res: :unknown}, _node, _kills, _window), do: false

  defp certain?(%{t1: t1}, node, kills, window) do
    not Enum.any?(kills, &(&1.node == node and t1 <= &1.t and t1 >= &1.t - window))
  end

  defp effective(op), do: op.res == :ok

  defp amount(%{f: :increment, args: [n]}), do: n
  defp amount(%{f: :decrement, args: [n]}), do: -n

  defp check_counters(by_id, dump) do
    for t <- [:g_counter, :pn_counter],
        id = {:shared, t},
        ops = Map.get(by_id, id, []),
        reduce: [] do
      acc ->
        {sure, unsure} =
          Enum.split_with(Enum.filter(ops, &(&1.res in [:ok, :unknown])), & &1.certain)

        base = sure |> Enum.map(&amount/1) |> Enum.sum()
        up = unsure |> Enum.map(&amount/1) |> Enum.filter(&(&1 > 0)) |> Enum.sum()
        down = unsure |> Enum.map(&amount/1) |> Enum.filter(&(&1 < 0)) |> Enum.sum()
        v = Map.get(dump, id)

        if is_integer(v) and v >= base + down and v <= base + up,
          do: acc,
          else:
            acc ++
              [
                "#{inspect(id)} is #{inspect(v)}, expected #{base + down}..#{base + up} (certain sum #{base})"
              ]
    end
  end

  defp check_sets(by_id, dump) do
    for t <- [:or_set, :aw_set], id = {:shared, t}, reduce: [] do
      acc ->
        set = Map.get(dump, id)
        ops = Map.get(by_id, id, [])
        added = for op <- ops, op.f == :add, into: MapSet.new(), do: hd(op.args)

        stray =
          if match?(%MapSet{}, set),
            do: MapSet.difference(set, added),
            else: MapSet.new([:not_a_set])

        acc =
          if MapSet.size(stray) == 0,
            do: acc,
            else:
              acc ++
                ["#{inspect(id)} holds elements never added: #{inspect(Enum.take(stray, 5))}"]

        ops
        |> Enum.reject(&is_binary(hd(&1.args)))
        |> Enum.group_by(&hd(&1.args))
        |> Enum.reduce(acc, fn {e, eops}, acc ->
          if Enum.all?(eops, & &1.certain) do
            last = eops |> Enum.filter(&effective/1) |> List.last()
            expected = last != nil and last.f == :add
            present = match?(%MapSet{}, set) and MapSet.member?(set, e)

            if present == expected,
              do: acc,
              else:
                acc ++
                  [
                    "#{inspect(id)}: element #{inspect(e)} present=#{present}, expected #{expected} (last op #{inspect(last && {last.f, last.node, last.seq})})"
                  ]
          else
            acc
          end
        end)
    end
  end

  defp check_register(by_id, dump) do
    id = {:shared, :lww_register}
    writes = Map.get(by_id, id, []) |> Enum.filter(&(&1.res in [:ok, :unknown]))
    v = Map.get(dump, id)

    allowed =
      writes
      |> Enum.group_by(&{&1.node, &1.w})
      |> Enum.flat_map(fn {_, ws} ->
        last_sure = ws |> Enum.with_index() |> Enum.filter(&elem(&1, 0).certain) |> List.last()
        from = if last_sure, do: elem(last_sure, 1), else: 0
        Enum.drop(ws, from) ++ Enum.reject(ws, & &1.certain)
      end)
      |> Enum.map(&hd(&1.args))

    allowed = if Enum.any?(writes, & &1.certain), do: allowed, else: [nil | allowed]

    if v in allowed,
      do: [],
      else: [
        "#{inspect(id)} is #{inspect(v)}, not the last value of any writer (#{length(allowed)} allowed)"
      ]
  end

  defp check_owned(by_id, dump) do
    for {id, ops} <- by_id,
        not match?({:shared, _}, id),
        Enum.all?(ops, & &1.certain),
        reduce: [] do
      acc ->
        expected =
          ops
          |> Enum.filter(&effective/1)
          |> Enum.reduce(:absent, fn op, state -> apply_op(state, op) end)

        actual = Map.fetch(dump, id)
        deleted? = Enum.any?(ops, &(&1.f == :delete and effective(&1)))

        case {expected, actual} do
          {:absent, :error} ->
            acc

          {:absent, {:ok, v}} when deleted? ->
            acc ++ ["deleted id came back: #{inspect(id)} = #{inspect(v)} (#{trail(ops)})"]

          {:absent, {:ok, v}} ->
            acc ++ ["never created id exists: #{inspect(id)} = #{inspect(v)}"]

          {{:present, v}, {:ok, v}} ->
            acc

          {{:present, v}, other} ->
            acc ++
              ["#{inspect(id)}: expected #{inspect(v)}, got #{inspect(other)} (#{trail(ops)})"]
        end
    end
  end

  defp trail(ops),
    do: ops |> Enum.take(-6) |> Enum.map_join(", ", &"#{&1.f}#{inspect(&1.args)}@#{&1.node}")

  defp apply_op(_, %{f: :create, args: [t]}) when t in [:g_counter, :pn_counter],
    do: {:present, 0}

  defp apply_op(_, %{f: :create, args: [t]}) when t in [:or_set, :aw_set],
    do: {:present, MapSet.new()}

  defp apply_op(_, %{f: :create, args: [:lww_register]}), do: {:present, nil}
  defp apply_op(_, %{f: :delete}), do: :absent

  defp apply_op({:present, v}, %{f: f} = op) when f in [:increment, :decrement],
    do: {:present, v + amount(op)}

  defp apply_op({:present, s}, %{f: :add, args: [e]}), do: {:present, MapSet.put(s, e)}
  defp apply_op({:present, s}, %{f: :remove, args: [e]}), do: {:present, MapSet.delete(s, e)}
  defp apply_op({:present, _}, %{f: :set, args: [v]}), do: {:present, v}

  # Per relaxed kill: increments of owned g_counters (one writer each,
  # never deleted) acknowledged and then lost, and how long before the kill
  # the first of them was acknowledged.
  defp measure_losses(st, by_id, dump, _window) do
    kills = Enum.filter(st.kills, &(&1.durability == :relaxed))

    shared_lost =
      case Map.get(dump, {:shared, :g_counter}) do
        v when is_integer(v) ->
          ok = by_id |> Map.get({:shared, :g_counter}, []) |> Enum.filter(&effective/1)
          Enum.sum(Enum.map(ok, &amount/1)) - v

        _ ->
          nil
      end

    per_kill =
      for k <- kills do
        lost =
          for {id, ops} <- by_id,
              not match?({:shared, _}, id),
              match?([%{f: :create, args: [:g_counter]} | _], ops),
              hd(ops).node == k.node,
              not Enum.any?(ops, &(&1.f == :delete)),
              incs = Enum.filter(ops, &(effective(&1) and &1.f == :increment)),
              incs != [],
              List.last(incs).t1 <= k.t,
              k.t - List.last(incs).t1 < 2_000,
              v = dump_count(dump, id),
              total = Enum.sum(Enum.map(incs, &amount/1)),
              total > v do
            {lost_ops, _} =
              incs
              |> Enum.reverse()
              |> Enum.reduce_while({[], total - v}, fn op, {acc, left} ->
                if left > 0,
                  do: {:cont, {[op | acc], left - amount(op)}},
                  else: {:halt, {acc, left}}
              end)

            {total - v, k.t - hd(lost_ops).t1}
          end

        %{
          node: k.node,
          lost_increments: lost |> Enum.map(&elem(&1, 0)) |> Enum.sum(),
          window_ms: lost |> Enum.map(&elem(&1, 1)) |> Enum.max(fn -> 0 end)
        }
      end

    %{shared_g_counter_lost: shared_lost, relaxed_kills: per_kill}
  end

  defp dump_count(dump, id) do
    case Map.get(dump, id) do
      v when is_integer(v) -> v
      _ -> 0
    end
  end

  # ---------------------------------------------------------------------------
  # Reporting

  defp now, do: System.monotonic_time(:millisecond)

  defp trace(st, action, note) do
    t = now() - st.ctx.t0
    %{st | trace: [{t, action, note} | st.trace]}
  end

  defp fail(st, message), do: keep(%{st | failures: st.failures ++ [message]})

  defp stop_all(st) do
    for h <- Map.values(st.peers), do: safe_stop(h)
    :ok
  end

  defp safe_stop(h) do
    Cluster.stop(h)
  rescue
    _ -> Cluster.kill9(h)
  end

  defp report(st, duration_ms) do
    %{
      seed: st.ctx.seed,
      nodes: st.ctx.sched.nodes,
      durability: st.ctx.sched.durability,
      failures: st.failures,
      faults: st.faults,
      transport: st.transport,
      losses: Map.get(st, :losses, %{}),
      ops: Map.get(st, :ops_count, 0),
      duration_ms: duration_ms,
      trace: st.trace |> Enum.take(30) |> Enum.reverse()
    }
  end

  @doc "A failure report: the seed, its failures and the last 30 steps."
  def format(report) do
    steps =
      Enum.map_join(report.trace, "\n", fn {t, action, note} ->
        "  +#{t}ms #{inspect(action)} #{note}"
      end)

    """
    chaos seed #{report.seed} (#{report.nodes} nodes, #{inspect(report.durability)}): #{length(report.failures)} failure(s)
    #{Enum.map_join(Enum.take(report.failures, 20), "\n", &("  - " <> &1))}
    replay: Vsmcp.Test.Chaos.run(#{report.seed}, tmp_dir: ...) / mix run bench/chaos.exs --seed #{report.seed}
    last steps:
    #{steps}
    """
  end
end
