# Benchmarks of distributed sync: three stores on three :peer nodes on
# 127.0.0.1 sharing one `sync_opts: [topic: ...]`.
#
#   MIX_ENV=prod mix run bench/sync.exs                      # full run, pg transport
#   MIX_ENV=prod mix run bench/sync.exs --transport pubsub   # over Phoenix.PubSub (Vsmcp.PubSub)
#   MIX_ENV=prod mix run bench/sync.exs --quick              # small sizes, a smoke test
#   MIX_ENV=prod mix run bench/sync.exs --only latency --only bytes
#   MIX_ENV=prod mix run bench/sync.exs --only steady         # 5 min, opt-in
#
# Phases (`--only NAME`, repeatable or comma-separated):
#
#   latency  write-to-visible p50/p99 of a probe register under steady load
#   orset    3 nodes x N distinct adds to one OR-Set: last write -> all hold 3N
#   bytes    sync bytes handed to the transport per increment
#   idle     sync traffic per second while idle and in sync
#   lossy    --ops increments in total over a transport dropping 5% of messages
#   memory   OS RSS of each node around --ops adds then --ops removes on one set
#   tombstones  --tombs ids created on one node, deleted on another: delete
#            tombstones held on each node, and how long until collected
#   steady   (issue 14; NOT in the default run, it lasts --steady-s, 5 min:
#            `--only steady`) --rate writes/s per node for --steady-s s, of
#            them --deletes deletes/s of counters created 1 s before and
#            --removes removes/s from remove-wins OR-Sets of elements added
#            1 s before (the same number of creates and adds; the rest half
#            increments, half register sets), one paced loader per node; a
#            probe register's write-to-visible p50/p99/max throughout; every
#            5 s per node: tombstones held (info/1), remove tokens held
#            (Native.store_remove_tokens/2 summed over all 15 sets, each read
#            once per sample to keep it in memory, where the NIF counts),
#            collected so far (sync_info/1 counters), ops/s, and as
#            diagnostics ids in memory, sync log entries, the sync peer's
#            mailbox and the ms each sampling call took; then the maxima
#            held (overall and after a 30 s warm-up) in seconds of the
#            cluster's deletes/removes, the probe's p99 per 5 s window, and
#            how long until 0 once the load stops. --no-steady-info skips
#            info/1 (no tombstone figures): its cost on the nodes shows in
#            the write-to-visible tail (see bench/RESULTS-sync.md)
#
# Sizes: --ops N (lossy increments in total and memory set size, default
# 1,000,000), --set-n N (orset adds per node, 10,000), --probes N (500),
# --probe-ms MS (20), --rate R (latency and steady load per node, ops/s,
# 2,000), --lossy-rate R (per node, 20,000), --drop P (0.05), --seed N,
# --idle S (20), --deadline S (lossy convergence deadline, 60), --tombs N
# (100,000), --steady-s S (300; 20 with --quick), --deletes R (200/s per
# node), --removes R (200/s per node), --no-steady-info.
#
# The runner is not part of the cluster: it drives each node over the
# :peer control channel (`connection: :standard_io`), with the tests'
# cluster helper (test/support/cluster.ex, compiled here: MIX_ENV=prod does
# not compile test/support). Everything timed runs on the nodes themselves,
# timestamped with :os.system_time(:microsecond): one machine, one clock.
# Results with machine and command are kept in bench/RESULTS-sync.md.
# From a checkout, build the NIF locally rather than download it:
# VSMCP_CRDT_BUILD=1 (see lib/vsmcp/crdt/native.ex).

cluster_modules = Code.require_file("../test/support/cluster.ex", __DIR__)

# --- code run on the nodes ----------------------------------------------------
# Compiled here and loaded into each node (`:load` of Vsmcp.Test.Cluster.start/2:
# modules of a script exist only in the VM that ran it).
{:module, node_mod, node_bin, _} =
  defmodule SyncBench.Node do
    @moduledoc false
    alias Vsmcp.CRDT.ContextStore

    @store :sync_bench_store

    def now, do: :os.system_time(:microsecond)

    def start_store(opts) do
      Logger.configure(level: :warning)
      {:ok, pid} = ContextStore.start_link([name: @store] ++ opts)
      Process.unlink(pid)
      :ok
    end

    def stop_store do
      for name <- [:sync_bench_load, :sync_bench_watch, :sync_bench_probe] do
        if pid = Process.whereis(name), do: Process.exit(pid, :kill)
      end

      if Process.whereis(@store), do: ContextStore.stop(@store), else: :ok
    end

    # Any ContextStore function on this node's bench store.
    def store(fun, args), do: apply(ContextStore, fun, [@store | args])

    def up_peers do
      case ContextStore.sync_info(@store) do
        %{peers: peers} -> Enum.count(peers, & &1.up)
        _ -> 0
      end
    end

    def sync_info do
      {info, _waited} = sync_info_wait(120_000)
      info
    end

    # sync_info/1 is a call to the store's sync peer with the default 5 s
    # timeout; the peer can be busy longer than that (a heartbeat re-hashing
    # a big set), so retry, and say how long it took to answer.
    def sync_info_wait(budget_ms) do
      t0 = System.monotonic_time(:millisecond)

      info =
        Stream.repeatedly(fn ->
          try do
            ContextStore.sync_info(@store)
          catch
            :exit, {:timeout, _} ->
              if System.monotonic_time(:millisecond) - t0 > budget_ms,
                do: raise("sync_info: no answer")

              nil
          end
        end)
        |> Enum.find(&is_map/1)

      {Map.take(info, [:counters, :log_entries, :log_bytes, :transport_stats, :rejected]),
       System.monotonic_time(:millisecond) - t0}
    end

    def rss_kb do
      status = File.read!("/proc/#{:os.getpid()}/status")
      [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
      String.to_integer(kb)
    end

    def memory_report do
      for p <- Process.list(), do: :erlang.garbage_collect(p)

      {sync, waited} = sync_info_wait(300_000)

      %{
        rss_kb: rss_kb(),
        beam_kb: div(:erlang.memory(:total), 1024),
        stats: ContextStore.stats(@store),
        sync: sync,
        info_ms: waited,
        set_bytes: set_bytes()
      }
    end

    # The bytes the big set's state holds (ContextStore.memory/2).
    def set_bytes do
      case ContextStore.memory(@store, :big) do
        {:ok, b} -> b
        _ -> nil
      end
    end

    defp sleep_until(t_us) do
      d = t_us - now()
      if d > 0, do: Process.sleep(div(d + 999, 1000))
    end

    # `fun.(i)` for i in 0..n-1 at `rate` calls per second (`:max` for as
    # fast as possible), from `t0` (µs) on. Returns {first_us, last_us}.
    def paced(rate, n, t0, fun) do
      sleep_until(t0)
      start = now()
      paced_loop(rate, n, start, 0, fun)
      {start, now()}
    end

    defp paced_loop(_rate, n, _start, n, _fun), do: :ok

    defp paced_loop(rate, n, start, done, fun) do
      target = if rate == :max, do: n, else: min(n, div((now() - start) * rate, 1_000_000))

      for i <- done..(target - 1)//1, do: fun.(i)
      if target < n, do: Process.sleep(1)
      paced_loop(rate, n, start, max(done, target), fun)
    end

    # Increments of `id` by `n` calls; answers :ok or an error count.
    def incs(rate, n, t0, id) do
      store = Process.whereis(@store)
      counter = :counters.new(1, [])

      {t1, t2} =
        paced(rate, n, t0, fn _i ->
          case ContextStore.increment(store, id, 1) do
            {:ok, _} -> :ok
            _ -> :counters.add(counter, 1, 1)
          end
        end)

      {t1, t2, :counters.get(counter, 1)}
    end

    # Increments spread over the counters {:k, 1..ids}.
    def spread_incs(rate, n, t0, ids) do
      store = Process.whereis(@store)
      counter = :counters.new(1, [])

      {t1, t2} =
        paced(rate, n, t0, fn i ->
          case ContextStore.increment(store, {:k, rem(i, ids) + 1}, 1) do
            {:ok, _} -> :ok
            _ -> :counters.add(counter, 1, 1)
          end
        end)

      {t1, t2, :counters.get(counter, 1)}
    end

    def spread_sum(ids) do
      Enum.reduce(1..ids, 0, fn i, acc ->
        case ContextStore.get(@store, {:k, i}) do
          {:ok, v} -> acc + v
          _ -> acc
        end
      end)
    end

    # --- steady load: increments of `id` at `rate`/s until stopped ----------
    def start_load(id, rate) do
      pid =
        spawn(fn ->
          store = Process.whereis(@store)
          load_loop(store, id, rate, now(), 0)
        end)

      Process.register(pid, :sync_bench_load)
      :ok
    end

    defp load_loop(store, id, rate, t0, done) do
      receive do
        {:stop, from, ref} -> send(from, {ref, done, now() - t0})
      after
        1 ->
          target = div((now() - t0) * rate, 1_000_000)
          for _ <- done..(target - 1)//1, do: {:ok, _} = ContextStore.increment(store, id, 1)
          load_loop(store, id, rate, t0, max(done, target))
      end
    end

    # Re-add `element` to set `id` every `interval_ms` (each add changes the
    # set's state, so the next heartbeat re-hashes it for the digest).
    def start_toucher(id, element, interval_ms) do
      pid =
        spawn(fn ->
          store = Process.whereis(@store)
          touch_loop(store, id, element, interval_ms, 0)
        end)

      Process.register(pid, :sync_bench_load)
      :ok
    end

    defp touch_loop(store, id, element, interval_ms, done) do
      receive do
        {:stop, from, ref} -> send(from, {ref, done, 0})
      after
        interval_ms ->
          :ok = ContextStore.update(store, id, {:add, element}, return: :ok)
          touch_loop(store, id, element, interval_ms, done + 1)
      end
    end

    def stop_load do
      ref = make_ref()
      send(:sync_bench_load, {:stop, self(), ref})

      receive do
        {^ref, done, us} -> {done, us}
      after
        10_000 -> :timeout
      end
    end

    # --- probes: node `me` writes probe k (k rem nodes == me) at t0 + k*interval
    # Answers collect_probes/0 with [{k, node, t_write}].
    def start_probes(me, nodes, n, interval_us, t0) do
      pid =
        spawn(fn ->
          store = Process.whereis(@store)

          writes =
            for k <- 0..(n - 1), rem(k, nodes) == me do
              sleep_until(t0 + k * interval_us)
              tw = now()
              {:ok, _} = ContextStore.set(store, :probe, {k, me, tw})
              {k, me, tw}
            end

          receive do
            {:collect, from, ref} -> send(from, {ref, writes})
          end
        end)

      Process.register(pid, :sync_bench_probe)
      :ok
    end

    def collect_probes do
      ref = make_ref()
      send(:sync_bench_probe, {:collect, self(), ref})

      receive do
        {^ref, writes} -> writes
      after
        60_000 -> :timeout
      end
    end

    # A subscriber of :probe: on each notification reads the register and
    # records {k, read_time} of the value read (collect_watch/0).
    def start_watch(me) do
      parent = self()

      pid =
        spawn(fn ->
          :ok = ContextStore.subscribe(@store, [:probe])
          send(parent, :subscribed)
          watch_loop(me, Process.whereis(@store), [], 0)
        end)

      receive do
        :subscribed -> Process.register(pid, :sync_bench_watch)
      after
        5_000 -> raise "subscribe timed out"
      end

      :ok
    end

    defp watch_loop(me, store, reads, notes) do
      receive do
        {:crdt_changed, _, :probe, _origin} ->
          {:ok, v} = ContextStore.get(store, :probe)
          t = now()

          reads =
            case v do
              {k, _w, _tw} -> [{k, t} | reads]
              _ -> reads
            end

          watch_loop(me, store, reads, notes + 1)

        {:collect, from, ref} ->
          send(from, {ref, Enum.reverse(reads), notes})
      end
    end

    def collect_watch do
      ref = make_ref()
      send(:sync_bench_watch, {:collect, self(), ref})

      receive do
        {^ref, reads, notes} -> {reads, notes}
      after
        10_000 -> :timeout
      end
    end

    # --- OR-Set: add {me, 1..n} from t0, then poll until all `nodes` x n are here
    def orset_run(me, nodes, n, t0, deadline_us) do
      store = Process.whereis(@store)
      sleep_until(t0)
      t_first = now()
      for j <- 1..n, do: :ok = ContextStore.update(store, :set, {:add, {me, j}}, return: :ok)
      t_last = now()
      others = for o <- 0..(nodes - 1), o != me, do: {o, n}
      {t_done, checks} = orset_poll(store, others, nodes * n, deadline_us, 0)
      %{t_first: t_first, t_last: t_last, t_done: t_done, size_checks: checks}
    end

    defp orset_poll(store, lasts, total, deadline, checks) do
      t = now()

      cond do
        Enum.all?(lasts, &(ContextStore.member?(store, :set, &1) == {:ok, true})) and
            set_size(store, :set) == total ->
          {now(), checks + 1}

        t > deadline ->
          {{:timeout, set_size(store, :set)}, checks}

        true ->
          Process.sleep(1)
          orset_poll(store, lasts, total, deadline, checks)
      end
    end

    defp set_size(store, id) do
      {:ok, s} = ContextStore.get(store, id)
      MapSet.size(s)
    end

    # --- memory: set ops on one id; membership counted without building the value
    def set_ops(op, id, from, to) do
      store = Process.whereis(@store)
      t1 = now()
      for i <- from..to, do: :ok = ContextStore.update(store, id, {op, i}, return: :ok)
      {t1, now()}
    end

    def member?(id, e), do: ContextStore.member?(@store, id, e)

    # --- tombstones: many ids created, then deleted
    def ids_op(op, from, to) do
      store = Process.whereis(@store)
      t1 = now()

      for i <- from..to do
        :ok =
          case op do
            :create -> ContextStore.create(store, {:t, i}, :g_counter)
            :delete -> ContextStore.delete(store, {:t, i})
          end
      end

      {t1, now()}
    end

    def tombstones, do: ContextStore.info(@store).crdts.tombstones

    def count_members(id, from, to) do
      store = Process.whereis(@store)
      Enum.count(from..to, &(ContextStore.member?(store, id, &1) == {:ok, true}))
    end

    # --- steady: a mixed load with deletes and set removes ---------------------
    # Each kind is paced on its own (`rates`, ops/s) from the loader's start:
    #   :incs    increments of the shared counters {:c, 0..pool-1}
    #   :sets    sets of the shared registers {:r, 0..pool-1} to %{v: i, at: t}
    #   :adds    adds of {:el, i} to this node's remove-wins sets {:s, me, i rem n_sets}
    #   :creates G-Counters {:d, me, i}
    #   :deletes of {:d, me, i}, `lag_ms` after its create
    #   :removes of {:el, i}, `lag_ms` after its add
    # Results are matched and discarded; failures are counted. :counters
    # slots 1..6 count the kinds done, 7 the failures (steady_sample/1).
    @steady_kinds [:incs, :sets, :adds, :creates, :deletes, :removes]

    def steady_ids_present?(ids),
      do: Enum.all?(ids, &match?({:ok, _}, ContextStore.get(@store, &1)))

    def start_steady(me, rates, pool, n_sets, lag_ms) do
      c = :counters.new(7, [:write_concurrency])
      t0 = now()
      :persistent_term.put(:sync_bench_steady, {c, t0})

      pid =
        spawn(fn ->
          st = %{
            store: Process.whereis(@store),
            me: me,
            rates: rates,
            pool: pool,
            n_sets: n_sets,
            lag: lag_ms * 1000,
            c: c,
            t0: t0,
            done: Map.new(@steady_kinds, &{&1, 0}),
            first_error: nil
          }

          steady_loop(st)
        end)

      Process.register(pid, :sync_bench_load)
      :ok
    end

    defp steady_loop(st) do
      receive do
        {:stop, from, ref} ->
          send(from, {ref, %{done: st.done, first_error: st.first_error}, now() - st.t0})
      after
        1 ->
          el = now() - st.t0
          st = Enum.reduce(@steady_kinds, st, &steady_kind(&2, &1, el))
          steady_loop(st)
      end
    end

    defp steady_kind(st, kind, el) do
      from = Map.fetch!(st.done, kind)
      r = Map.fetch!(st.rates, kind)

      target =
        case kind do
          :deletes -> min(div(max(el - st.lag, 0) * r, 1_000_000), st.done.creates)
          :removes -> min(div(max(el - st.lag, 0) * r, 1_000_000), st.done.adds)
          _ -> div(el * r, 1_000_000)
        end

      if target > from do
        st = steady_ops(st, kind, from, target)
        :counters.add(st.c, slot(kind), target - from)
        %{st | done: Map.put(st.done, kind, target)}
      else
        st
      end
    end

    defp slot(kind), do: Enum.find_index(@steady_kinds, &(&1 == kind)) + 1

    defp steady_ops(st, _kind, i, i), do: st

    defp steady_ops(st, kind, i, to) do
      st =
        case steady_op(st, kind, i) do
          :ok ->
            st

          {:ok, _} ->
            st

          other ->
            :counters.add(st.c, 7, 1)
            if st.first_error, do: st, else: %{st | first_error: {kind, i, other}}
        end

      steady_ops(st, kind, i + 1, to)
    end

    defp steady_op(st, :incs, i), do: ContextStore.increment(st.store, {:c, rem(i, st.pool)}, 1)

    defp steady_op(st, :sets, i),
      do:
        ContextStore.update(st.store, {:r, rem(i, st.pool)}, {:set, %{v: i, at: now()}},
          return: :ok
        )

    defp steady_op(st, :adds, i),
      do:
        ContextStore.update(st.store, {:s, st.me, rem(i, st.n_sets)}, {:add, {:el, i}},
          return: :ok
        )

    defp steady_op(st, :creates, i), do: ContextStore.create(st.store, {:d, st.me, i}, :g_counter)
    defp steady_op(st, :deletes, i), do: ContextStore.delete(st.store, {:d, st.me, i})

    defp steady_op(st, :removes, i),
      do:
        ContextStore.update(st.store, {:s, st.me, rem(i, st.n_sets)}, {:remove, {:el, i}},
          return: :ok
        )

    # Tombstones and remove tokens held, collected so far (sync counters),
    # and the loader's counts (`set_ids`: every OR-Set this node holds).
    def steady_sample(set_ids, with_info? \\ true) do
      store = Process.whereis(@store)
      # The loader's counts with their time first: the calls below can take
      # a while on a busy machine.
      t = now()

      {done, errors, t0} =
        case :persistent_term.get(:sync_bench_steady, nil) do
          {c, t0} -> {Enum.map(1..6, &:counters.get(c, &1)), :counters.get(c, 7), t0}
          nil -> {List.duplicate(0, 6), 0, t}
        end

      # The sync peer's mailbox (a diagnostic: a peer falling behind shows here).
      queue =
        case GenServer.call(store, :peer) do
          {:ok, peer} when is_pid(peer) ->
            case Process.info(peer, :message_queue_len) do
              {:message_queue_len, q} -> q
              _ -> nil
            end

          _ ->
            nil
        end

      t1 = now()
      info = if with_info?, do: info_retry(60_000), else: %{crdts: %{tombstones: nil}, hot: nil}
      t2 = now()
      # Native.store_remove_tokens/2 counts sets in memory only, and the
      # decay pass (every 60 s) moves the sets this node only merges into to
      # the warm tier: one read of each set per sample brings them back
      # (after :access_threshold reads) and keeps them there.
      Enum.each(set_ids, &ContextStore.member?(store, &1, :sync_bench_none))
      tokens = remove_tokens(store, set_ids)
      t3 = now()
      {sync, _} = sync_info_wait(60_000)
      t4 = now()

      %{
        t: t,
        t0: t0,
        tombstones: info.crdts.tombstones,
        tokens: tokens,
        hot: info.hot,
        hot_sets: get_in(info, [:crdts, :hot, :by_type, :or_set]),
        log_entries: sync.log_entries,
        peer_queue: queue,
        # ms taken by info/1, the remove tokens and sync_info/1
        sample_ms: Enum.map_join([t2 - t1, t3 - t2, t4 - t3], "+", &div(&1, 1000)),
        collected_tombstones: sync.counters.collected_tombstones,
        collected_elements: sync.counters.collected_elements,
        done: done,
        ops: Enum.sum(done),
        errors: errors
      }
    end

    # info/1 asks the sync peer too (5 s call timeout): retry when it is busy.
    defp info_retry(budget_ms) do
      t0 = System.monotonic_time(:millisecond)

      Stream.repeatedly(fn ->
        try do
          ContextStore.info(@store)
        catch
          :exit, {:timeout, _} ->
            if System.monotonic_time(:millisecond) - t0 > budget_ms,
              do: raise("info: no answer")

            nil
        end
      end)
      |> Enum.find(&is_map/1)
    end

    # Sum over `set_ids` of Native.store_remove_tokens/2; nil when the NIF
    # has no such function.
    def remove_tokens(store, set_ids) do
      Enum.reduce_while(set_ids, 0, fn id, acc ->
        try do
          case Vsmcp.CRDT.Native.store_remove_tokens(store, id) do
            {:ok, n} -> {:cont, acc + n}
            _ -> {:cont, acc}
          end
        rescue
          _ -> {:halt, nil}
        end
      end)
    end
  end

# --- runner -------------------------------------------------------------------
:persistent_term.put(:sync_bench_load, [{node_mod, node_bin} | cluster_modules])

defmodule SyncBench do
  @moduledoc false

  alias Vsmcp.Test.Cluster

  @node_mod SyncBench.Node

  def now, do: :os.system_time(:microsecond)

  def row(cols),
    do:
      IO.puts("| " <> Enum.map_join(cols, " | ", &String.pad_trailing(to_string(&1), 22)) <> " |")

  def percentile([], _p), do: nil

  def percentile(sorted, p),
    do: Enum.at(sorted, min(length(sorted) - 1, trunc(length(sorted) * p)))

  def ms(nil), do: "-"
  def ms(us), do: "#{Float.round(us / 1000, 2)} ms"

  def loadavg do
    case File.read("/proc/loadavg") do
      {:ok, s} -> s |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "?"
    end
  end

  # Poll `fun` every `interval` ms until truthy: {:ok, value, waited_ms} or
  # {:timeout, last}.
  def eventually(fun, timeout_ms, interval \\ 20) do
    t0 = System.monotonic_time(:millisecond)
    poll(fun, t0, t0 + timeout_ms, interval)
  end

  defp poll(fun, t0, deadline, interval) do
    v = fun.()

    cond do
      v not in [nil, false] ->
        {:ok, v, System.monotonic_time(:millisecond) - t0}

      System.monotonic_time(:millisecond) >= deadline ->
        {:timeout, v}

      true ->
        Process.sleep(interval)
        poll(fun, t0, deadline, interval)
    end
  end

  # --- nodes ----------------------------------------------------------------

  # `n` connected nodes under `tmp` (see Vsmcp.Test.Cluster), with the
  # node code of this script and, for the pubsub transport, Vsmcp.PubSub.
  def start_nodes(n, tmp, transport) do
    Cluster.start(n,
      tmp_dir: tmp,
      cleanup: :manual,
      load: :persistent_term.get(:sync_bench_load),
      prefix: "sync_bench",
      app_env: [{:logger, :level, :warning}],
      pubsub: if(transport == :pubsub, do: Vsmcp.PubSub)
    )
  end

  def stop_nodes(nodes), do: Cluster.stop(nodes)

  def call(n, fun, args, timeout \\ 60_000), do: Cluster.call(n, @node_mod, fun, args, timeout)
  def store(n, fun, args), do: call(n, :store, [fun, args])

  # Run `fun.(node)` on all nodes at once; results in node order.
  def on_all(nodes, fun, timeout \\ 600_000) do
    nodes |> Enum.map(fn n -> Task.async(fn -> fun.(n) end) end) |> Task.await_many(timeout)
  end

  # --- stores ---------------------------------------------------------------

  def start_stores(nodes, phase, cfg, sync_extra \\ []) do
    topic = "sync_bench_#{phase}_#{System.unique_integer([:positive])}"

    for n <- nodes do
      sync_opts = Keyword.merge([topic: topic, transport: cfg.transport], sync_extra)

      :ok =
        call(n, :start_store, [
          [
            node_id: :"bench_n#{n.index + 1}",
            storage_opts: [data_dir: Path.join([n.dir, phase])],
            sync_opts: sync_opts
          ]
        ])
    end

    {:ok, _, ms} =
      eventually(
        fn -> Enum.all?(nodes, &(call(&1, :up_peers, []) == length(nodes) - 1)) end,
        15_000
      )

    IO.puts("(stores up on topic #{topic}, peers discovered after #{ms} ms)")
    :ok
  end

  def stop_stores(nodes) do
    for n <- nodes, do: call(n, :stop_store, [])
    :ok
  end

  # Create `id` on the first node and wait until every node has it: a
  # concurrent create on several nodes would make one create win whole
  # (generations, see native/vsmcp_crdt_core/src/record.rs), dropping the others' writes.
  def create_everywhere([a | _] = nodes, id, type, empty) do
    :ok = store(a, :create, [id, type])

    {:ok, _, _} =
      eventually(fn -> Enum.all?(nodes, &(store(&1, :get, [id]) == {:ok, empty})) end, 15_000)
  end

  # Write-to-visible of each probe written by another node than `me`: the
  # first read on `me` of that probe or of a later one (an LWW register: a
  # later value replaces it) minus its write time. Returns
  # {sorted latencies in µs, superseded (never read itself), never covered}.
  def probe_latencies(writes, watched, me) do
    {pairs, superseded} = probe_latency_pairs(writes, watched, me)
    lats = Enum.map(pairs, &elem(&1, 1))

    {lats |> Enum.reject(&is_nil/1) |> Enum.sort(), superseded, Enum.count(lats, &is_nil/1)}
  end

  # [{t_write, latency or nil}] of the probes written by another node than
  # `me`, by probe index, and how many were superseded (never read themselves).
  def probe_latency_pairs(writes, {reads, _notes}, me) do
    exact = MapSet.new(reads, &elem(&1, 0))

    # Running maximum of the index read, with the read time.
    {covered, _} = Enum.map_reduce(reads, -1, fn {k, t}, mx -> {{max(k, mx), t}, max(k, mx)} end)

    mine = writes |> Enum.reject(fn {_k, w, _tw} -> w == me end) |> Enum.sort()

    # `mine` ascends by k and `covered` by its running maximum: one walk
    # finds each probe's first covering read (linear: the steady phase has
    # thousands of probes).
    {pairs, _} =
      Enum.map_reduce(mine, covered, fn {k, _w, tw}, cov ->
        case Enum.drop_while(cov, fn {mx, _t} -> mx < k end) do
          [{_, t} | _] = rest -> {{tw, t - tw}, rest}
          [] -> {{tw, nil}, []}
        end
      end)

    {pairs, Enum.count(mine, fn {k, _, _} -> k not in exact end)}
  end

  def counters(nodes), do: Enum.map(nodes, &call(&1, :sync_info, []).counters)

  def diff(after_, before, key),
    do:
      Enum.zip(after_, before)
      |> Enum.map(fn {a, b} -> Map.fetch!(a, key) - Map.fetch!(b, key) end)
end

alias SyncBench, as: B

{opts, rest, invalid} =
  OptionParser.parse(System.argv(),
    strict: [
      only: :keep,
      ops: :integer,
      set_n: :integer,
      probes: :integer,
      probe_ms: :integer,
      rate: :integer,
      lossy_rate: :integer,
      drop: :float,
      seed: :integer,
      idle: :integer,
      deadline: :integer,
      tombs: :integer,
      steady_s: :integer,
      deletes: :integer,
      removes: :integer,
      steady_info: :boolean,
      transport: :string,
      quick: :boolean
    ]
  )

if rest != [] or invalid != [], do: raise("unknown arguments: #{inspect(rest ++ invalid)}")

all_phases = ~w(latency orset bytes idle lossy memory tombstones steady)
# steady runs 5 minutes by default: only when asked for (--only steady).
default_phases = all_phases -- ~w(steady)
only = opts |> Keyword.get_values(:only) |> Enum.flat_map(&String.split(&1, ","))
phases = if only == [], do: default_phases, else: only

for p <- phases,
    p not in all_phases,
    do: raise("unknown phase #{p}; phases: #{inspect(all_phases)}")

quick = Keyword.get(opts, :quick, false)

cfg = %{
  transport:
    case Keyword.get(opts, :transport, "pg") do
      "pg" -> :pg
      "pubsub" -> :pubsub
      other -> raise "unknown transport #{other}"
    end,
  ops: Keyword.get(opts, :ops, if(quick, do: 100_000, else: 1_000_000)),
  set_n: Keyword.get(opts, :set_n, if(quick, do: 2_000, else: 10_000)),
  probes: Keyword.get(opts, :probes, if(quick, do: 100, else: 500)),
  probe_ms: Keyword.get(opts, :probe_ms, 20),
  rate: Keyword.get(opts, :rate, 2_000),
  lossy_rate: Keyword.get(opts, :lossy_rate, 20_000),
  drop: Keyword.get(opts, :drop, 0.05),
  seed: Keyword.get(opts, :seed, 42),
  idle: Keyword.get(opts, :idle, if(quick, do: 5, else: 20)),
  deadline: Keyword.get(opts, :deadline, 60),
  tombs: Keyword.get(opts, :tombs, if(quick, do: 10_000, else: 100_000)),
  steady_s: Keyword.get(opts, :steady_s, if(quick, do: 20, else: 300)),
  deletes: Keyword.get(opts, :deletes, 200),
  removes: Keyword.get(opts, :removes, 200),
  steady_info: Keyword.get(opts, :steady_info, true)
}

IO.puts("# vsmcp_crdt sync benchmarks")

IO.puts(
  "OTP #{System.otp_release()}, Elixir #{System.version()}, cores #{System.schedulers_online()}, " <>
    "transport #{cfg.transport}, phases #{Enum.join(phases, ",")}"
)

IO.puts("sizes: #{inspect(cfg)}")
IO.puts("load average at start: #{B.loadavg()}\n")

tmp = Path.join(System.tmp_dir!(), "vsmcp_sync_bench_#{System.unique_integer([:positive])}")
File.mkdir_p!(tmp)
t_start = System.monotonic_time(:millisecond)
nodes = B.start_nodes(3, tmp, cfg.transport)
[na, nb, nc] = nodes
IO.puts("3 nodes up: #{Enum.map_join(nodes, ", ", &"#{&1.node} (os pid #{&1.os_pid})")}\n")

phase = fn name, fun ->
  if name in phases do
    IO.puts("## #{name} (load average #{B.loadavg()})")
    t = System.monotonic_time(:millisecond)

    try do
      fun.()
    after
      B.stop_stores(nodes)
    end

    IO.puts(
      "(#{name}: #{System.monotonic_time(:millisecond) - t} ms, load average #{B.loadavg()})\n"
    )
  end
end

try do
  # --- 1. write-to-visible latency under steady load -------------------------
  phase.("latency", fn ->
    B.start_stores(nodes, "latency", cfg)
    B.create_everywhere(nodes, :load, :g_counter, 0)
    B.create_everywhere(nodes, :probe, :lww_register, nil)
    for n <- nodes, do: :ok = B.call(n, :start_watch, [n.index])
    for n <- nodes, do: :ok = B.call(n, :start_load, [:load, cfg.rate])
    # Warm-up under load.
    Process.sleep(1_000)
    interval = cfg.probe_ms * 1000
    t0 = B.now() + 200_000
    for n <- nodes, do: :ok = B.call(n, :start_probes, [n.index, 3, cfg.probes, interval, t0])
    Process.sleep(div(cfg.probes * interval, 1000) + 200 + 500)
    watched = for n <- nodes, do: B.call(n, :collect_watch, [])
    writes = Enum.flat_map(nodes, &B.call(&1, :collect_probes, []))
    loads = for n <- nodes, do: B.call(n, :stop_load, [])
    total = loads |> Enum.map(&elem(&1, 0)) |> Enum.sum()

    {:ok, _, conv_ms} =
      B.eventually(
        fn -> Enum.all?(nodes, &(B.store(&1, :get, [:load]) == {:ok, total})) end,
        30_000
      )

    rates = Enum.map(loads, fn {done, us} -> round(done / (us / 1_000_000)) end)

    IO.puts(
      "load: increments of one shared G-Counter, #{Enum.join(rates, " / ")} ops/s per node " <>
        "(#{total} in total; all nodes read #{total} #{conv_ms} ms after the load stopped)"
    )

    IO.puts(
      "probe: every #{cfg.probe_ms} ms one node (in turn) sets an LWW register to {k, node, t_write}; " <>
        "the two others are subscribed (subscribe/3) and read it on each notification; " <>
        "latency = first read of that probe or a later one - write time (one clock)"
    )

    B.row(["receiver", "samples", "p50", "p90", "p99", "max", "notifications", "superseded/never"])

    all =
      for {n, w} <- Enum.zip(nodes, watched) do
        {s, superseded, never} = B.probe_latencies(writes, w, n.index)
        notes = elem(w, 1)

        B.row([
          "n#{n.index + 1}",
          length(s),
          B.ms(B.percentile(s, 0.5)),
          B.ms(B.percentile(s, 0.9)),
          B.ms(B.percentile(s, 0.99)),
          B.ms(List.last(s)),
          notes,
          "#{superseded} / #{never}"
        ])

        s
      end
      |> Enum.concat()
      |> Enum.sort()

    B.row([
      "all",
      length(all),
      B.ms(B.percentile(all, 0.5)),
      B.ms(B.percentile(all, 0.9)),
      B.ms(B.percentile(all, 0.99)),
      B.ms(List.last(all)),
      "",
      ""
    ])

    IO.puts(
      "RESULT latency p50=#{B.ms(B.percentile(all, 0.5))} p99=#{B.ms(B.percentile(all, 0.99))} (target p99 <= 20 ms)"
    )
  end)

  # --- 2. OR-Set: 3 x N concurrent distinct adds -------------------------------
  phase.("orset", fn ->
    B.start_stores(nodes, "orset", cfg)
    B.create_everywhere(nodes, :set, :or_set, MapSet.new())
    t0 = B.now() + 300_000
    deadline = t0 + 60_000_000

    res =
      B.on_all(nodes, fn n ->
        B.call(n, :orset_run, [n.index, 3, cfg.set_n, t0, deadline], 120_000)
      end)

    last = res |> Enum.map(& &1.t_last) |> Enum.max()
    first = res |> Enum.map(& &1.t_first) |> Enum.min()

    B.row(["node", "adds took", "all #{3 * cfg.set_n} held after last write", "size checks"])

    for {n, r} <- Enum.zip(nodes, res) do
      done = if is_integer(r.t_done), do: B.ms(r.t_done - last), else: inspect(r.t_done)
      B.row(["n#{n.index + 1}", B.ms(r.t_last - r.t_first), done, r.size_checks])
    end

    if Enum.all?(res, &is_integer(&1.t_done)) do
      conv = (res |> Enum.map(& &1.t_done) |> Enum.max()) - last

      IO.puts(
        "RESULT orset: all 3 nodes hold all #{3 * cfg.set_n} elements #{B.ms(conv)} after the last write " <>
          "(first write to all held: #{B.ms(conv + last - first)}) (target <= 200 ms)"
      )
    else
      IO.puts("RESULT orset: NOT converged within 60 s: #{inspect(Enum.map(res, & &1.t_done))}")
    end
  end)

  # --- 3. bytes per increment ----------------------------------------------------
  phase.("bytes", fn ->
    B.start_stores(nodes, "bytes", cfg)
    B.create_everywhere(nodes, :c, :g_counter, 0)
    for n <- nodes, do: :ok = B.store(n, :sync, [])
    Process.sleep(1_500)

    # Background (heartbeats) while idle, to subtract from the windows below.
    c0 = B.counters(nodes)
    bg_ms = 5_000
    Process.sleep(bg_ms)
    c1 = B.counters(nodes)
    bg = Enum.sum(B.diff(c1, c0, :bytes_sent)) / (bg_ms / 1000)
    IO.puts("background (idle, all 3 nodes): #{Float.round(bg, 1)} B/s sent")

    runs = [
      {"100/s per node, 5 s", 100, 500},
      {"#{cfg.rate}/s per node, 5 s", cfg.rate, cfg.rate * 5},
      {"as fast as possible", :max, div(if(quick, do: 30_000, else: 300_000), 3)}
    ]

    B.row([
      "increments",
      "total incs",
      "B sent",
      "msgs sent",
      "B/increment",
      "B/inc net of bg",
      "msgs/inc"
    ])

    for {label, rate, per_node} <- runs do
      {:ok, expected} = B.store(na, :get, [:c])
      expected = expected + 3 * per_node
      before = B.counters(nodes)
      w0 = System.monotonic_time(:millisecond)
      t0 = B.now() + 100_000
      res = B.on_all(nodes, fn n -> B.call(n, :incs, [rate, per_node, t0, :c], 120_000) end)
      0 = res |> Enum.map(&elem(&1, 2)) |> Enum.sum()

      {:ok, _, _} =
        B.eventually(
          fn -> Enum.all?(nodes, &(B.store(&1, :get, [:c]) == {:ok, expected})) end,
          30_000,
          5
        )

      # Let the last acknowledgements go out.
      Process.sleep(100)
      after_ = B.counters(nodes)
      window_s = (System.monotonic_time(:millisecond) - w0) / 1000
      incs = 3 * per_node
      bytes = Enum.sum(B.diff(after_, before, :bytes_sent))
      msgs = Enum.sum(B.diff(after_, before, :msgs_sent))
      net = bytes - bg * window_s

      B.row([
        label,
        incs,
        bytes,
        msgs,
        Float.round(bytes / incs, 2),
        Float.round(net / incs, 2),
        Float.round(msgs / incs, 4)
      ])

      IO.puts(
        "RESULT bytes[#{label}] #{Float.round(bytes / incs, 2)} B/increment (target < 100 B)"
      )
    end

    IO.puts(
      "(bytes_sent counts each message once as handed to the transport: a delta goes to each of the 2 peers " <>
        "as its own message, a heartbeat is one broadcast; acknowledgements are included; windows include ~100 ms of waiting for convergence)"
    )
  end)

  # --- 4. idle traffic ----------------------------------------------------------
  phase.("idle", fn ->
    B.start_stores(nodes, "idle", cfg)
    B.create_everywhere(nodes, :s, :or_set, MapSet.new())
    for i <- 1..100, do: :ok = B.store(na, :create, [{:k, i}, :g_counter])
    for i <- 1..1_000, do: {:ok, _} = B.store(nb, :add, [:s, i])
    B.call(nc, :spread_incs, [:max, 10_000, 0, 100])

    {:ok, _, _} =
      B.eventually(
        fn -> Enum.all?(nodes, &(B.call(&1, :spread_sum, [100]) == 10_000)) end,
        30_000
      )

    for n <- nodes, do: :ok = B.store(n, :sync, [])
    # Let hellos go round so every peer has seen equal digest roots.
    Process.sleep(3_000)
    before = Enum.map(nodes, &B.call(&1, :sync_info, []).counters)
    Process.sleep(cfg.idle * 1000)
    after_ = Enum.map(nodes, &B.call(&1, :sync_info, []).counters)
    s = cfg.idle

    B.row([
      "node",
      "B/s sent",
      "msgs/s sent",
      "B/s received",
      "digests sent",
      "states sent",
      "retransmits"
    ])

    for {n, {a, b}} <- Enum.zip(nodes, Enum.zip(after_, before)) do
      B.row([
        "n#{n.index + 1}",
        Float.round((a.bytes_sent - b.bytes_sent) / s, 1),
        Float.round((a.msgs_sent - b.msgs_sent) / s, 2),
        Float.round((a.bytes_received - b.bytes_received) / s, 1),
        a.digests_sent - b.digests_sent,
        a.states_sent - b.states_sent,
        a.retransmits - b.retransmits
      ])
    end

    received = Enum.sum(B.diff(after_, before, :bytes_received))
    sent = B.diff(after_, before, :bytes_sent) |> Enum.max()
    # 3 nodes: 6 directed peer links.
    per_link = received / 6 / s

    IO.puts(
      "RESULT idle #{Float.round(per_link, 1)} B/s per peer (received per directed link; " <>
        "max sent by one node #{Float.round(sent / s, 1)} B/s) over #{s} s (target < 1 KB/s)"
    )
  end)

  # --- 5. lossy transport ----------------------------------------------------------
  phase.("lossy", fn ->
    inner =
      if cfg.transport == :pubsub,
        do: {Vsmcp.CRDT.Sync.Transport.PubSub, [pubsub: Vsmcp.PubSub]},
        else: {Vsmcp.CRDT.Sync.Transport.PG, []}

    # One seed per node (start_stores merges these options; seed differs below).
    topic = "sync_bench_lossy_#{System.unique_integer([:positive])}"

    for n <- nodes do
      :ok =
        B.call(n, :start_store, [
          [
            node_id: :"bench_n#{n.index + 1}",
            storage_opts: [data_dir: Path.join(n.dir, "lossy")],
            sync_opts: [
              topic: topic,
              transport: Vsmcp.CRDT.Sync.Transport.Faulty,
              transport_opts: [inner: inner, drop: cfg.drop, seed: cfg.seed + n.index]
            ]
          ]
        ])
    end

    {:ok, _, _} =
      B.eventually(fn -> Enum.all?(nodes, &(B.call(&1, :up_peers, []) == 2)) end, 30_000)

    ids = 100
    for i <- 1..ids, do: :ok = B.store(na, :create, [{:k, i}, :g_counter])

    {:ok, _, _} =
      B.eventually(
        fn -> Enum.all?(nodes, &(length(B.store(&1, :list_crdts, [])) == ids)) end,
        30_000
      )

    # --ops in total: the remainder of the division by 3 goes to the first nodes.
    per_node = fn n -> div(cfg.ops, 3) + if(n.index < rem(cfg.ops, 3), do: 1, else: 0) end
    expected = cfg.ops
    before = B.counters(nodes)
    t0 = B.now() + 200_000

    res =
      B.on_all(nodes, fn n ->
        B.call(n, :spread_incs, [cfg.lossy_rate, per_node.(n), t0, ids], 600_000)
      end)

    errors = res |> Enum.map(&elem(&1, 2)) |> Enum.sum()
    last = res |> Enum.map(&elem(&1, 1)) |> Enum.max()
    first = res |> Enum.map(&elem(&1, 0)) |> Enum.min()

    IO.puts(
      "#{expected} increments over #{ids} counters from 3 nodes at #{cfg.lossy_rate}/s each " <>
        "(took #{B.ms(last - first)}, #{errors} errors), drop #{cfg.drop}, seeds #{cfg.seed}+i"
    )

    result =
      B.eventually(
        fn -> Enum.all?(nodes, &(B.call(&1, :spread_sum, [ids]) == expected)) end,
        cfg.deadline * 1000,
        10
      )

    conv =
      case result do
        {:ok, _, _} -> B.ms(B.now() - last)
        {:timeout, _} -> "not within #{cfg.deadline} s"
      end

    sums = Enum.map(nodes, &B.call(&1, :spread_sum, [ids]))
    infos = Enum.map(nodes, &B.call(&1, :sync_info, []))
    after_ = Enum.map(infos, & &1.counters)

    B.row([
      "node",
      "observed sum",
      "lost",
      "msgs sent",
      "dropped",
      "retransmits",
      "digests sent",
      "states sent"
    ])

    for {n, {sum, {info, {a, b}}}} <-
          Enum.zip(nodes, Enum.zip(sums, Enum.zip(infos, Enum.zip(after_, before)))) do
      ts = info.transport_stats || %{}

      B.row([
        "n#{n.index + 1}",
        sum,
        expected - sum,
        a.msgs_sent - b.msgs_sent,
        Map.get(ts, :dropped, "?"),
        a.retransmits - b.retransmits,
        a.digests_sent - b.digests_sent,
        a.states_sent - b.states_sent
      ])
    end

    lost = Enum.max(Enum.map(sums, &(expected - &1)))

    IO.puts(
      "RESULT lossy expected #{expected}, observed #{Enum.join(sums, " / ")}, lost #{lost}; " <>
        "converged #{conv} after the last write (target 0 lost)"
    )

    if lost != 0 do
      for n <- nodes, do: IO.puts("sync on n#{n.index + 1}: #{inspect(B.store(n, :sync, []))}")
      Process.sleep(2_000)

      IO.puts(
        "after a forced sync: #{Enum.map_join(nodes, " / ", &B.call(&1, :spread_sum, [ids]))}"
      )
    end
  end)

  # --- 6. memory of a set after N adds and N removes --------------------------------
  phase.("memory", fn ->
    # Fresh nodes, so that "before" is not what earlier phases left in RSS.
    old_nodes = nodes

    nodes =
      if phases == ["memory"],
        do: old_nodes,
        else: B.start_nodes(3, Path.join(tmp, "fresh"), cfg.transport)

    [na, nb, nc] = nodes

    try do
      B.start_stores(nodes, "memory", cfg)
      n = cfg.ops
      B.create_everywhere(nodes, :big, :or_set, MapSet.new())
      B.create_everywhere(nodes, :probe, :lww_register, nil)

      du = fn ->
        Enum.map(nodes, fn nd ->
          elem(System.cmd("du", ["-sk", "--apparent-size", Path.join(nd.dir, "memory")]), 0)
          |> String.split()
          |> hd()
        end)
      end

      p0 = System.monotonic_time(:millisecond)
      stamp = fn what -> IO.puts("(#{System.monotonic_time(:millisecond) - p0} ms: #{what})") end

      report = fn label ->
        reps = Enum.map(nodes, &B.call(&1, :memory_report, [], 600_000))
        disk = du.()

        for {nd, {r, d}} <- Enum.zip(nodes, Enum.zip(reps, disk)) do
          B.row([
            label,
            "n#{nd.index + 1}",
            "#{div(r.rss_kb, 1024)} MiB",
            "#{div(r.beam_kb, 1024)} MiB",
            "#{div(String.to_integer(d), 1024)} MiB",
            "#{r.sync.log_entries} / #{div(r.sync.log_bytes, 1024)} KiB",
            "hot #{r.stats.hot} warm #{r.stats.warm} pend #{r.stats.pending_writes}",
            "#{r.info_ms} ms"
          ])
        end

        reps
      end

      B.row([
        "when",
        "node",
        "RSS",
        "BEAM memory",
        "disk (du, apparent)",
        "sync log entries/size",
        "stats",
        "sync_info answered in"
      ])

      r0 = report.("before")

      {ta1, ta2} = B.call(na, :set_ops, [:add, :big, 1, n], 600_000)

      stamp.("adds done on n1")

      {:ok, _, _} =
        B.eventually(
          fn -> Enum.all?(nodes, &(B.call(&1, :member?, [:big, n]) == {:ok, true})) end,
          300_000,
          10
        )

      stamp.("last element seen on all nodes")

      t_seen = B.now()
      counts = Enum.map(nodes, &B.call(&1, :count_members, [:big, 1, n], 600_000))
      stamp.("members counted")
      r1 = report.("after #{n} adds")

      # Write-to-visible latency of a small register in the same store while
      # the big set is touched (one re-add of an existing element) every 100 ms.
      for nd <- [nb, nc], do: :ok = B.call(nd, :start_watch, [nd.index])
      :ok = B.call(na, :start_toucher, [:big, 1, 100])
      n_probe = 100
      t0 = B.now() + 200_000
      :ok = B.call(na, :start_probes, [0, 1, n_probe, 50_000, t0])
      Process.sleep(div(n_probe * 50, 1) + 200 + 3_000)
      watched = for nd <- [nb, nc], do: B.call(nd, :collect_watch, [])
      writes = B.call(na, :collect_probes, [])
      {touches, _} = B.call(na, :stop_load, [])

      lats =
        Enum.map(Enum.zip([nb, nc], watched), fn {nd, w} ->
          B.probe_latencies(writes, w, nd.index)
        end)

      lat = lats |> Enum.flat_map(&elem(&1, 0)) |> Enum.sort()
      superseded = lats |> Enum.map(&elem(&1, 1)) |> Enum.sum()
      never = lats |> Enum.map(&elem(&1, 2)) |> Enum.sum()

      IO.puts(
        "probe register in the same store, set on n1 every 50 ms while the #{n}-element set is re-added to " <>
          "every 100 ms (#{touches} times): on n2/n3 #{superseded} of #{2 * n_probe} probes superseded before read, " <>
          "#{never} never visible within 3 s; write-to-visible p50 #{B.ms(B.percentile(lat, 0.5))}, p99 #{B.ms(B.percentile(lat, 0.99))}, " <>
          "max #{B.ms(List.last(lat))}"
      )

      {tr1, tr2} = B.call(na, :set_ops, [:remove, :big, 1, n], 600_000)

      stamp.("removes done on n1")

      {:ok, _, _} =
        B.eventually(
          fn -> Enum.all?(nodes, &(B.call(&1, :member?, [:big, n]) == {:ok, false})) end,
          300_000,
          10
        )

      stamp.("last element seen on all nodes")

      t_seen2 = B.now()
      counts2 = Enum.map(nodes, &B.call(&1, :count_members, [:big, 1, n], 600_000))
      stamp.("members counted")
      r2 = report.("after #{n} removes")

      for nd <- nodes,
          do: IO.puts("(sync on n#{nd.index + 1}: #{inspect(B.store(nd, :sync, [30_000]))})")

      r3 = report.("after sync")

      IO.puts(
        "adds on n1: #{B.ms(ta2 - ta1)} (#{round(n / ((ta2 - ta1) / 1_000_000))}/s), last add on all nodes " <>
          "#{B.ms(t_seen - ta2)} after; members counted: #{Enum.join(counts, " / ")}"
      )

      IO.puts(
        "removes on n1: #{B.ms(tr2 - tr1)} (#{round(n / ((tr2 - tr1) / 1_000_000))}/s), last remove on all nodes " <>
          "#{B.ms(t_seen2 - tr2)} after; members counted: #{Enum.join(counts2, " / ")}"
      )

      per_elem = fn ra, rb ->
        Enum.zip(ra, rb)
        |> Enum.map_join(" / ", fn {a, b} -> Float.round((a.rss_kb - b.rss_kb) * 1024 / n, 1) end)
      end

      IO.puts("RSS growth per element after adds (n1/n2/n3): #{per_elem.(r1, r0)} B")
      IO.puts("RSS growth per element after removes (vs before): #{per_elem.(r2, r0)} B")
      IO.puts("RSS growth per element after sync (vs before): #{per_elem.(r3, r0)} B")

      IO.puts(
        "RESULT memory RSS n1/n2/n3 MiB: before #{Enum.map_join(r0, "/", &div(&1.rss_kb, 1024))}, " <>
          "adds #{Enum.map_join(r1, "/", &div(&1.rss_kb, 1024))}, removes #{Enum.map_join(r2, "/", &div(&1.rss_kb, 1024))}, " <>
          "sync #{Enum.map_join(r3, "/", &div(&1.rss_kb, 1024))}"
      )

      IO.puts("stats after sync (n1): #{inspect(hd(r3).stats)}")

      # Causal-stability collection: once every node agrees (hellos every
      # second, `collect_after` 2 s), the remove tokens go.
      deadline = B.now() + 120_000_000

      collected =
        Stream.repeatedly(fn ->
          Process.sleep(1_000)
          Enum.map(nodes, &B.call(&1, :set_bytes, [], 600_000))
        end)
        |> Enum.find(fn bytes ->
          B.now() > deadline or Enum.all?(bytes, &(is_integer(&1) and &1 < 1_000_000))
        end)

      stamp.("collection checked")

      IO.puts(
        "RESULT memory of the set (ContextStore.memory/2) n1/n2/n3: after adds " <>
          "#{Enum.map_join(r1, "/", &inspect(&1.set_bytes))} B, after removes " <>
          "#{Enum.map_join(r2, "/", &inspect(&1.set_bytes))} B, after collection " <>
          "#{Enum.map_join(collected, "/", &inspect/1)} B"
      )
    after
      if nodes != old_nodes do
        B.stop_stores(nodes)
        B.stop_nodes(nodes)
      end
    end
  end)

  # --- 7. delete tombstones: held after deletes, then collected ------------------
  phase.("tombstones", fn ->
    B.start_stores(nodes, "tombstones", cfg)
    n = cfg.tombs
    {c1, c2} = B.call(na, :ids_op, [:create, 1, n], 600_000)

    {:ok, _, _} =
      B.eventually(
        fn -> Enum.all?(nodes, &(B.store(&1, :get, [{:t, n}]) == {:ok, 0})) end,
        60_000
      )

    :ok = B.store(na, :sync, [])
    {d1, d2} = B.call(nb, :ids_op, [:delete, 1, n], 600_000)

    {:ok, _, _} =
      B.eventually(
        fn ->
          Enum.all?(nodes, fn x ->
            B.store(x, :get, [{:t, n}]) == {:error, :not_found} and
              B.store(x, :get, [{:t, 1}]) == {:error, :not_found}
          end)
        end,
        60_000
      )

    t_gone = B.now()
    held = Enum.map(nodes, &B.call(&1, :tombstones, []))

    {:ok, _, _} =
      B.eventually(fn -> Enum.all?(nodes, &(B.call(&1, :tombstones, []) == 0)) end, 120_000, 100)

    collected_after = B.now() - d2
    counts = B.counters(nodes) |> Enum.map(& &1.collected_tombstones)

    IO.puts(
      "#{n} creates on n1 took #{B.ms(c2 - c1)}, #{n} deletes on n2 took #{B.ms(d2 - d1)}; " <>
        "deletes visible everywhere #{B.ms(t_gone - d2)} after the last one"
    )

    IO.puts(
      "RESULT tombstones: held n1/n2/n3 when the deletes were visible " <>
        "#{Enum.join(held, "/")}, all collected #{B.ms(collected_after)} after the last delete " <>
        "(collected per node #{Enum.join(counts, "/")}; collect_after 2000 ms, 1 s hellos)"
    )
  end)

  # --- 8. steady load with deletes and set removes (issue 14) -------------------
  phase.("steady", fn ->
    s = cfg.steady_s
    r = cfg.rate
    d = cfg.deletes
    x = cfg.removes
    # Every delete needs its create, every remove its add: the rest of the
    # rate goes half to increments, half to register sets.
    rest = r - 2 * d - 2 * x

    if rest < 0,
      do: raise("--rate #{r} is below 2 x (--deletes #{d} + --removes #{x}) (creates and adds)")

    rates = %{
      incs: div(rest + 1, 2),
      sets: div(rest, 2),
      adds: x,
      creates: d,
      deletes: d,
      removes: x
    }

    pool = 100
    n_sets = 5
    lag_ms = 1_000
    sample_s = 5
    warmup_s = min(30, div(s, 2))

    B.start_stores(nodes, "steady", cfg)
    shared = for k <- 0..(pool - 1), do: [{{:c, k}, :g_counter}, {{:r, k}, :lww_register}]
    shared = List.flatten(shared) ++ [{:probe, :lww_register}]
    for {id, type} <- shared, do: :ok = B.store(na, :create, [id, type])

    for n <- nodes,
        j <- 0..(n_sets - 1),
        do: :ok = B.store(n, :create, [{:s, n.index, j}, :or_set])

    set_ids = for n <- nodes, j <- 0..(n_sets - 1), do: {:s, n.index, j}
    ids = Enum.map(shared, &elem(&1, 0)) ++ set_ids

    {:ok, _, _} =
      B.eventually(fn -> Enum.all?(nodes, &B.call(&1, :steady_ids_present?, [ids])) end, 30_000)

    IO.puts(
      "load per node: #{r} writes/s = #{rates.incs} increments of #{pool} shared G-Counters + " <>
        "#{rates.sets} sets of #{pool} shared LWW registers to %{v: i, at: t} + " <>
        "#{x} adds of {:el, i} to the node's #{n_sets} remove-wins OR-Sets + #{d} creates of G-Counters " <>
        "{:d, node, i} + #{d} deletes of them #{lag_ms} ms after their create + #{x} removes of the added " <>
        "elements #{lag_ms} ms after their add; default sync options (1 s hellos, collect_after 2 s); " <>
        "#{s} s, sampled every #{sample_s} s, warm-up #{warmup_s} s"
    )

    for n <- nodes, do: :ok = B.call(n, :start_watch, [n.index])
    n_probes = div(s * 1000, cfg.probe_ms)
    interval = cfg.probe_ms * 1000
    t_load = B.now()

    B.on_all(nodes, fn n ->
      :ok = B.call(n, :start_steady, [n.index, rates, pool, n_sets, lag_ms])
    end)

    t_probe = B.now() + 200_000
    for n <- nodes, do: :ok = B.call(n, :start_probes, [n.index, 3, n_probes, interval, t_probe])

    cols = fn samples, f -> Enum.map_join(samples, "/", f) end

    B.row([
      "t (s)",
      "tombstones held",
      "remove tokens held",
      "collected tombstones",
      "collected elements",
      "ops/s in window",
      "ids (sets) in memory",
      "sync log entries",
      "peer mailbox",
      "info+tokens+sync ms",
      "load average"
    ])

    sample = fn ->
      B.on_all(nodes, &B.call(&1, :steady_sample, [set_ids, cfg.steady_info], 180_000))
    end

    s0 = sample.()

    {samples, _} =
      Enum.map_reduce(1..div(s, sample_s)//1, s0, fn k, prev ->
        wait = t_load + k * sample_s * 1_000_000 - B.now()
        if wait > 0, do: Process.sleep(div(wait, 1000))
        cur = sample.()

        rate =
          Enum.zip(cur, prev)
          |> Enum.map(fn {a, b} -> round((a.ops - b.ops) / ((a.t - b.t) / 1_000_000)) end)

        t = round((hd(cur).t - t_load) / 1_000_000)

        B.row([
          t,
          cols.(cur, &inspect(&1.tombstones)),
          cols.(cur, &inspect(&1.tokens)),
          cols.(cur, & &1.collected_tombstones),
          cols.(cur, & &1.collected_elements),
          Enum.join(rate, "/"),
          cols.(cur, &"#{inspect(&1.hot)}(#{inspect(&1.hot_sets)})"),
          cols.(cur, & &1.log_entries),
          cols.(cur, &inspect(&1.peer_queue)),
          cols.(cur, & &1.sample_ms),
          B.loadavg()
        ])

        {{t, cur}, cur}
      end)

    wait = t_load + s * 1_000_000 - B.now()
    if wait > 0, do: Process.sleep(div(wait, 1000))
    loads = Enum.map(nodes, &B.call(&1, :stop_load, []))
    t_stop = B.now()
    # The probes end at t_probe + s: let the last ones arrive.
    wait = t_probe + n_probes * interval + 500_000 - B.now()
    if wait > 0, do: Process.sleep(div(wait, 1000))
    watched = for n <- nodes, do: B.call(n, :collect_watch, [])
    writes = Enum.flat_map(nodes, &B.call(&1, :collect_probes, []))

    # Load stopped: how long until nothing is held.
    drained =
      B.eventually(
        fn ->
          cur = sample.()
          Enum.all?(cur, &(&1.tombstones in [0, nil] and &1.tokens in [0, nil])) and cur
        end,
        60_000,
        500
      )

    drain =
      case drained do
        {:ok, _, _} ->
          "all nodes hold 0 #{if cfg.steady_info, do: "tombstones and 0 "}tokens #{B.ms(B.now() - t_stop)} after the load stopped"

        {:timeout, _} ->
          "NOT drained 60 s after the load stopped: #{inspect(Enum.map(sample.(), &{&1.tombstones, &1.tokens}))}"
      end

    # --- summary
    maxes = fn rows, key ->
      for i <- 0..2,
          do:
            rows
            |> Enum.map(fn {_t, cur} -> Enum.at(cur, i) |> Map.fetch!(key) end)
            |> Enum.max(fn -> nil end)
    end

    warm = Enum.filter(samples, fn {t, _} -> t >= warmup_s end)
    cluster_d = 3 * d
    cluster_x = 3 * x

    secs = fn
      nil, _ -> "-"
      _, 0 -> "-"
      held, rate -> "#{Float.round(held / rate, 2)} s"
    end

    max_of = fn l -> l |> Enum.reject(&is_nil/1) |> Enum.max(fn -> nil end) end

    IO.puts("")

    B.row([
      "held (max over samples)",
      "tombstones n1/n2/n3",
      "max",
      "s of cluster deletes",
      "tokens n1/n2/n3",
      "max",
      "s of cluster removes"
    ])

    for {label, rows} <- [{"overall", samples}, {"after #{warmup_s} s warm-up", warm}] do
      tb = maxes.(rows, :tombstones)
      tk = maxes.(rows, :tokens)

      B.row([
        label,
        Enum.map_join(tb, "/", &inspect/1),
        inspect(max_of.(tb)),
        secs.(max_of.(tb), cluster_d),
        Enum.map_join(tk, "/", &inspect/1),
        inspect(max_of.(tk)),
        secs.(max_of.(tk), cluster_x)
      ])
    end

    lat_for = fn from_us ->
      ws = Enum.filter(writes, fn {_k, _w, tw} -> tw >= from_us end)

      {lats, sup, never} =
        Enum.zip(nodes, watched)
        |> Enum.map(fn {n, w} -> B.probe_latencies(ws, w, n.index) end)
        |> Enum.reduce({[], 0, 0}, fn {l, s1, n1}, {la, sa, na} ->
          {[l | la], sa + s1, na + n1}
        end)

      {lats |> Enum.concat() |> Enum.sort(), sup, never}
    end

    {lat, sup, never} = lat_for.(0)
    {lat_w, _, _} = lat_for.(t_load + warmup_s * 1_000_000)

    lat_line = fn l ->
      "p50 #{B.ms(B.percentile(l, 0.5))}, p99 #{B.ms(B.percentile(l, 0.99))}, max #{B.ms(List.last(l))} (#{length(l)} samples)"
    end

    IO.puts(
      "write-to-visible of the probe register (set every #{cfg.probe_ms} ms by one node in turn, read on notification by the two others): " <>
        "#{lat_line.(lat)}; after warm-up #{lat_line.(lat_w)}; #{sup} superseded before read, #{never} never read"
    )

    # The tail by window of write time: a steady tail or spikes?
    by_window =
      Enum.zip(nodes, watched)
      |> Enum.flat_map(fn {n, w} -> elem(B.probe_latency_pairs(writes, w, n.index), 0) end)
      |> Enum.reject(fn {_tw, l} -> is_nil(l) end)
      |> Enum.group_by(
        fn {tw, _} -> div(max(tw - t_load, 0), sample_s * 1_000_000) end,
        &elem(&1, 1)
      )
      |> Enum.sort()
      |> Enum.map_join(" ", fn {k, l} ->
        l = Enum.sort(l)

        "#{(k + 1) * sample_s}:#{Float.round(B.percentile(l, 0.99) / 1000, 1)}/#{Float.round(List.last(l) / 1000, 1)}"
      end)

    IO.puts(
      "write-to-visible p99/max in ms by #{sample_s} s window of write time (t:p99/max): #{by_window}"
    )

    # What the pacing asked for by the time the loader stopped (deletes and
    # removes start lag_ms late).
    scheduled = fn us ->
      Enum.reduce(rates, 0, fn
        {k, rk}, acc when k in [:deletes, :removes] ->
          acc + div(max(us - lag_ms * 1000, 0) * rk, 1_000_000)

        {_k, rk}, acc ->
          acc + div(us * rk, 1_000_000)
      end)
    end

    for {n, {summary, us}} <- Enum.zip(nodes, loads) do
      total = summary.done |> Map.values() |> Enum.sum()

      by_kind =
        Enum.map_join([:incs, :sets, :adds, :creates, :deletes, :removes], " ", fn k ->
          "#{k} #{Map.fetch!(summary.done, k)}"
        end)

      IO.puts(
        "n#{n.index + 1}: #{total} ops of #{scheduled.(us)} scheduled in #{B.ms(us)} " <>
          "(#{round(total / (us / 1_000_000))}/s over the whole run; #{by_kind}); " <>
          "first failure #{inspect(summary.first_error)}"
      )
    end

    # Sustained rate: ops between the first sample after warm-up (or the
    # start) and the last one.
    {_, w0} = List.first(warm) || {0, s0}
    {_, w1} = List.last(samples) || {0, s0}

    achieved =
      Enum.zip(w1, w0)
      |> Enum.map(fn {a, b} ->
        if a.t > b.t, do: (a.ops - b.ops) / ((a.t - b.t) / 1_000_000), else: 0.0
      end)

    behind =
      Enum.map(loads, fn {summary, us} ->
        scheduled.(us) - (summary.done |> Map.values() |> Enum.sum())
      end)

    reached = Enum.all?(achieved, &(&1 >= 0.98 * r)) and Enum.all?(behind, &(&1 <= 0.02 * r))

    final = sample.()
    errors = Enum.map(final, & &1.errors)
    tb_w = warm |> maxes.(:tombstones) |> max_of.()
    tk_w = warm |> maxes.(:tokens) |> max_of.()
    tb_all = samples |> maxes.(:tombstones) |> max_of.()
    tk_all = samples |> maxes.(:tokens) |> max_of.()

    IO.puts(drain)

    IO.puts(
      "collected in total per node: tombstones #{cols.(final, & &1.collected_tombstones)}, " <>
        "elements #{cols.(final, & &1.collected_elements)} (deletes issued #{cols.(loads, &elem(&1, 0).done.deletes)} per node, " <>
        "removes #{cols.(loads, &elem(&1, 0).done.removes)}); failed ops #{Enum.join(errors, "/")}"
    )

    IO.puts(
      "RESULT steady #{s} s, target #{r} writes/s per node (#{d} deletes/s, #{x} removes/s): achieved " <>
        "#{Enum.map_join(achieved, "/", &round/1)}/s after warm-up, behind schedule at the end by " <>
        "#{Enum.join(behind, "/")} ops (#{if reached, do: "sustained", else: "NOT sustained"}); " <>
        "max tombstones held #{inspect(tb_w)} after warm-up (#{secs.(tb_w, cluster_d)} of the cluster's #{cluster_d} deletes/s), " <>
        "#{inspect(tb_all)} overall; max remove tokens held #{inspect(tk_w)} after warm-up (#{secs.(tk_w, cluster_x)} of the cluster's " <>
        "#{cluster_x} removes/s), #{inspect(tk_all)} overall; write-to-visible p50 #{B.ms(B.percentile(lat, 0.5))} " <>
        "p99 #{B.ms(B.percentile(lat, 0.99))} max #{B.ms(List.last(lat))} (target p99 <= 20 ms)"
    )
  end)
after
  B.stop_nodes(nodes)
  File.rm_rf!(tmp)
end

IO.puts(
  "total: #{div(System.monotonic_time(:millisecond) - t_start, 1000)} s, load average #{B.loadavg()}"
)
