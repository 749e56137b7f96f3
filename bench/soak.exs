# Soak (issue 16): a steady mixed load on three :peer nodes running the host
# application shape, with a partition every minute, sampled over time.
#
#   epmd -daemon
#   VSMCP_CRDT_BUILD=1 MIX_ENV=prod mix run bench/soak.exs                 # 10 minutes
#   VSMCP_CRDT_BUILD=1 MIX_ENV=prod mix run bench/soak.exs --duration 60   # a smoke run
#
# Each node runs what a host application runs: Phoenix.PubSub named
# Vsmcp.PubSub and `Vsmcp.CRDT.Supervisor`, the default store
# (`Vsmcp.CRDT.ContextStore`, data in the node's `data/`, default options,
# syncing over Vsmcp.PubSub on its default topic).
#
# Load: --workers processes per node, together --rate ops/s per node, paced
# (a worker more than half a second behind schedule skips the backlog and
# counts it as skipped), results discarded (failures counted). Over a
# bounded id space of about --ids ids, so that memory can plateau:
#
#   * 3/4 of the ids are shared by all nodes, created once at the start, in
#     five equal groups: G-Counters {:g, k}, PN-Counters {:pn, k},
#     remove-wins OR-Sets {:rw, k}, add-wins OR-Sets {:aw, k} and LWW
#     registers {:reg, k};
#   * 1/4 are churn ids {:d, node, worker, j}, each owned by one worker that
#     deletes it when it exists and re-creates it (with the next of five
#     types, then one write) when it does not: delete tombstones are made
#     all the time.
#
# Op mix per worker (percent): 20 increments of a G-Counter, 8 increments or
# decrements of a PN-Counter, 15 adds and 9 removes on a remove-wins set
# (remove tokens), 10 adds and 7 removes on an add-wins set (elements
# {:e, 0..39} and "s0".."s39"), 20 register sets to a map, 11 churn steps.
#
# Partitions: --partition-s s long, the first --partition-every/2 s after
# the start and then every --partition-every s, in turn: n1 cut off, n2 cut
# off, n1-n3 only (partial: n2 still sees both), n3 cut off, n1-n2 only,
# n2-n3 only; then healed.
#
# Convergence lag: every --probe-ms ms each node sets its probe register
# {:probe, i} to %{seq:, t:}; the two others are subscribed (subscribe/3)
# and read it on each notification. The lag of a probe on a reader is the
# first read there of that probe or a later one minus its write time (one
# machine, one clock: :os.system_time). Per sample and reader: p50 and max
# of the probes resolved in the interval, and the age of the oldest probe
# not yet visible there.
#
# Every --interval s, per node: ops done, failures and skipped ops, probe
# lag, VmRSS of the node's OS process (/proc/<pid>/status) and its
# resident memory by mapping kind (/proc/<pid>/smaps: glibc heap and
# arenas, a 1 GiB+ read-write mapping (mimalloc's arena, when the NIF used
# it), other anonymous, files), the NIF's Rust heap (info/1: live bytes and
# jemalloc's resident bytes),
# open file handles (/proc/<pid>/fd, by kind), :erlang.memory/0 and the
# BEAM's allocator carriers (:instrument.carriers/0), info/1 (delete
# tombstones held: crdts.tombstones; items hot/warm; the store's memory and
# disk figures; sync_info collection counters and log), and remove tokens
# held: Native.store_remove_tokens/2 summed over every remove-wins set id
# of the id space (it counts the sets in memory, hot tier, only).
#
# Writes to --out (default bench/soak): soak.csv (one row per sample and
# node), soak-partitions.csv and soak.svg (the plot), and prints a summary:
# the first warm minute against the last, and the growth per minute of
# each memory figure and of the file handles from the 2nd-3rd minutes to
# the last two (minutes scaled down for runs shorter than 6 minutes).
# A --partition-every over twice --duration runs without partitions.
# Results: bench/RESULTS-soak.md.
# Options: --duration S (600), --interval S (5), --out DIR, --rate R (2000
# ops/s per node), --workers N (4), --ids N (2000), --partition-every S
# (60), --partition-s S (10), --probe-ms MS (250), --seed N.
#
# The runner is not part of the cluster (test/support/cluster.ex, compiled
# here: MIX_ENV=prod does not compile test/support). From a checkout, build
# the NIF locally rather than download it: VSMCP_CRDT_BUILD=1.

cluster_modules = Code.require_file("../test/support/cluster.ex", __DIR__)

# --- code run on the nodes ----------------------------------------------------
{:module, node_mod, node_bin, _} =
  defmodule SoakBench.Node do
    @moduledoc false
    alias Vsmcp.CRDT.ContextStore

    @kinds [:g, :pn, :rw, :aw, :reg]
    @types %{g: :g_counter, pn: :pn_counter, rw: :or_set, aw: :aw_set, reg: :lww_register}
    @churn_types [:g_counter, :or_set, :aw_set, :pn_counter, :lww_register]

    def now, do: :os.system_time(:microsecond)

    # The host application's shape: Vsmcp.PubSub runs (Cluster.start/2's
    # :pubsub), then the default store under Vsmcp.CRDT.Supervisor.
    def start_default do
      Logger.configure(level: :warning)
      {:ok, sup} = Vsmcp.CRDT.Supervisor.start_link()
      Process.unlink(sup)
      :ok
    end

    def up_peers do
      case ContextStore.sync_info() do
        %{peers: peers} -> Enum.count(peers, & &1.up)
        _ -> 0
      end
    end

    def transport, do: ContextStore.sync_info() |> Map.take([:transport, :topic])

    # --- the id space ---------------------------------------------------------
    def per_kind(cfg), do: div(cfg.ids * 3, 4 * length(@kinds))

    def churn_n(cfg), do: max(1, div(cfg.ids, 4 * cfg.nodes * cfg.workers))

    def shared_ids(cfg), do: for(kind <- @kinds, k <- 0..(per_kind(cfg) - 1), do: {kind, k})

    def churn_ids(cfg) do
      for me <- 0..(cfg.nodes - 1),
          w <- 0..(cfg.workers - 1),
          j <- 0..(churn_n(cfg) - 1),
          do: {:d, me, w, j}
    end

    def probe_ids(cfg), do: for(i <- 0..(cfg.nodes - 1), do: {:probe, i})

    def all_ids(cfg), do: shared_ids(cfg) ++ churn_ids(cfg) ++ probe_ids(cfg)

    def create_shared(cfg) do
      for {kind, _} = id <- shared_ids(cfg), do: :ok = ContextStore.create(id, @types[kind])
      for id <- probe_ids(cfg), do: :ok = ContextStore.create(id, :lww_register)
      :ok
    end

    def shared_present(cfg) do
      Enum.count(shared_ids(cfg) ++ probe_ids(cfg), &match?({:ok, _}, ContextStore.get(&1)))
    end

    # A hash of every value of the id space: equal on every node once converged.
    def digest(cfg), do: cfg |> all_ids() |> Enum.map(&ContextStore.get/1) |> :erlang.phash2()

    # --- load -----------------------------------------------------------------
    # :counters slots: 1 ops done, 2 failures, 3 skipped (behind schedule),
    # 4 churn deletes.
    def start_load(cfg) do
      c = :counters.new(4, [:write_concurrency])
      :persistent_term.put({__MODULE__, :load}, c)
      pids = for w <- 0..(cfg.workers - 1), do: spawn(fn -> worker(cfg, w, c) end)
      :persistent_term.put({__MODULE__, :workers}, pids)
      :ok
    end

    def stop_load do
      pids = :persistent_term.get({__MODULE__, :workers}, [])

      for pid <- pids do
        ref = Process.monitor(pid)
        send(pid, :stop)

        receive do
          {:DOWN, ^ref, _, _, _} -> :ok
        after
          10_000 -> Process.exit(pid, :kill)
        end
      end

      :ok
    end

    defp worker(cfg, w, c) do
      :rand.seed(:exsss, {cfg.me + 1, w + 1, cfg.seed})
      rate = cfg.rate / cfg.workers

      st = %{
        cfg: cfg,
        me: cfg.me,
        w: w,
        c: c,
        t0: now(),
        done: 0,
        rate: rate,
        max_backlog: max(1, trunc(rate / 2)),
        per_kind: per_kind(cfg),
        churn_n: churn_n(cfg),
        churn: %{},
        churn_i: 0,
        i: 0
      }

      work_loop(st)
    end

    defp work_loop(st) do
      receive do
        :stop -> :ok
      after
        0 ->
          target = trunc((now() - st.t0) * st.rate / 1_000_000)
          backlog = target - st.done

          st =
            if backlog > st.max_backlog do
              :counters.add(st.c, 3, backlog - st.max_backlog)
              %{st | done: target - st.max_backlog}
            else
              st
            end

          n = target - st.done

          if n > 0 do
            st = Enum.reduce(1..n, st, fn _, st -> one_op(st) end)
            :counters.add(st.c, 1, n)
            work_loop(%{st | done: target})
          else
            Process.sleep(1)
            work_loop(st)
          end
      end
    end

    defp one_op(st) do
      st = %{st | i: st.i + 1}
      r = :rand.uniform(100)
      k = :rand.uniform(st.per_kind) - 1

      cond do
        r <= 20 -> check(st, ContextStore.increment(ContextStore, {:g, k}, 1))
        r <= 24 -> check(st, ContextStore.increment(ContextStore, {:pn, k}, :rand.uniform(3)))
        r <= 28 -> check(st, ContextStore.decrement(ContextStore, {:pn, k}, :rand.uniform(3)))
        r <= 43 -> check(st, upd({:rw, k}, {:add, element()}))
        r <= 52 -> check(st, upd({:rw, k}, {:remove, element()}))
        r <= 62 -> check(st, upd({:aw, k}, {:add, element()}))
        r <= 69 -> check(st, upd({:aw, k}, {:remove, element()}))
        r <= 89 -> check(st, upd({:reg, k}, {:set, %{v: st.i, node: st.me, at: now()}}))
        true -> churn(st)
      end
    end

    defp element do
      n = :rand.uniform(40) - 1
      if rem(n, 2) == 0, do: {:e, n}, else: "s#{n}"
    end

    defp upd(id, op), do: ContextStore.update(ContextStore, id, op, return: :ok)

    # The next churn id of this worker: deleted if it exists, else created
    # with the next type and written once.
    defp churn(st) do
      j = st.churn_i
      id = {:d, st.me, st.w, j}
      st = %{st | churn_i: rem(j + 1, st.churn_n)}

      case Map.get(st.churn, j) do
        {true, gen} ->
          :counters.add(st.c, 4, 1)
          st = check(st, ContextStore.delete(ContextStore, id))
          %{st | churn: Map.put(st.churn, j, {false, gen + 1})}

        other ->
          gen = if other, do: elem(other, 1), else: 0
          type = Enum.at(@churn_types, rem(j + gen, length(@churn_types)))
          st = check(st, ContextStore.create(ContextStore, id, type))

          st =
            case type do
              :g_counter -> check(st, ContextStore.increment(ContextStore, id, 1))
              :pn_counter -> check(st, ContextStore.decrement(ContextStore, id, 1))
              :or_set -> check(st, upd(id, {:add, element()}))
              :aw_set -> check(st, upd(id, {:add, element()}))
              :lww_register -> check(st, upd(id, {:set, %{gen: gen, node: st.me}}))
            end

          %{st | churn: Map.put(st.churn, j, {true, gen})}
      end
    end

    defp check(st, :ok), do: st
    defp check(st, {:ok, _}), do: st

    defp check(st, _other) do
      :counters.add(st.c, 2, 1)
      st
    end

    # --- probes -----------------------------------------------------------------
    def start_probes(cfg) do
      others = for i <- 0..(cfg.nodes - 1), i != cfg.me, do: {:probe, i}
      parent = self()

      watcher =
        spawn(fn ->
          :ok = ContextStore.subscribe(ContextStore, others)
          send(parent, :subscribed)
          watch_loop(%{}, [])
        end)

      receive do
        :subscribed -> :ok
      after
        10_000 -> raise "probe watcher: not subscribed"
      end

      Process.register(watcher, :soak_watcher)
      prober = spawn(fn -> probe_loop(cfg.me, cfg.probe_ms * 1000, now(), 1, []) end)
      Process.register(prober, :soak_prober)
      :ok
    end

    def stop_probes do
      for name <- [:soak_prober, :soak_watcher],
          pid = Process.whereis(name),
          do: Process.exit(pid, :kill)

      :ok
    end

    defp probe_loop(me, interval_us, t0, seq, acc) do
      wait = div(t0 + seq * interval_us - now(), 1000)

      receive do
        {:drain, from, ref} ->
          send(from, {ref, Enum.reverse(acc)})
          probe_loop(me, interval_us, t0, seq, [])
      after
        max(wait, 0) ->
          t = now()

          acc =
            case upd({:probe, me}, {:set, %{seq: seq, t: t}}) do
              :ok -> [{seq, t} | acc]
              _ -> acc
            end

          probe_loop(me, interval_us, t0, seq + 1, acc)
      end
    end

    defp watch_loop(seen, acc) do
      receive do
        {:crdt_changed, _store, {:probe, w} = id, _origin} ->
          t = now()

          case ContextStore.get(ContextStore, id) do
            {:ok, %{seq: s}} ->
              if s > Map.get(seen, w, 0),
                do: watch_loop(Map.put(seen, w, s), [{w, s, t} | acc]),
                else: watch_loop(seen, acc)

            _ ->
              watch_loop(seen, acc)
          end

        {:drain, from, ref} ->
          send(from, {ref, Enum.reverse(acc)})
          watch_loop(seen, [])

        _ ->
          watch_loop(seen, acc)
      end
    end

    # Probes written ([{seq, t}]) and read ([{writer, seq, t}]) since the last drain.
    def drain_probes, do: {drain(:soak_prober), drain(:soak_watcher)}

    defp drain(name) do
      case Process.whereis(name) do
        nil ->
          []

        pid ->
          ref = make_ref()
          send(pid, {:drain, self(), ref})

          receive do
            {^ref, list} -> list
          after
            30_000 -> []
          end
      end
    end

    # --- samples ----------------------------------------------------------------
    def sample(cfg) do
      t = now()

      {ops, errors, skipped, deletes} =
        case :persistent_term.get({__MODULE__, :load}, nil) do
          nil ->
            {0, 0, 0, 0}

          c ->
            {:counters.get(c, 1), :counters.get(c, 2), :counters.get(c, 3), :counters.get(c, 4)}
        end

      mem = :erlang.memory()

      queue =
        with {:ok, peer} when is_pid(peer) <- GenServer.call(ContextStore, :peer),
             {:message_queue_len, q} <- Process.info(peer, :message_queue_len) do
          q
        else
          _ -> nil
        end

      t1 = now()
      # nil when the store or its sync peer did not answer for 30 s (the
      # sample is kept, its info/1 columns left empty).
      info = info_retry(30_000) || %{}
      t2 = now()
      i = fn path -> get_in(info, path) end
      tokens = remove_tokens(cfg)
      t3 = now()

      %{
        t: t,
        ops: ops,
        errors: errors,
        skipped: skipped,
        deletes: deletes,
        beam_total: mem[:total],
        beam_processes: mem[:processes],
        beam_binary: mem[:binary],
        beam_ets: mem[:ets],
        beam_code: mem[:code],
        beam_atom: mem[:atom],
        beam_system: mem[:system],
        beam_carriers: beam_carriers(),
        process_count: :erlang.system_info(:process_count),
        port_count: :erlang.system_info(:port_count),
        tombstones: i.([:crdts, :tombstones]),
        tokens: tokens,
        hot: i.([:hot]),
        warm: i.([:warm]),
        hot_bytes: i.([:memory, :hot_bytes]),
        warm_bytes: i.([:memory, :warm_bytes]),
        memtable_bytes: i.([:memory, :memtable_bytes]),
        block_cache_bytes: i.([:memory, :block_cache_bytes]),
        table_readers_bytes: i.([:memory, :table_readers_bytes]),
        nif_live_bytes: i.([:memory, :nif_heap_live_bytes]),
        nif_resident_bytes: i.([:memory, :nif_heap_resident_bytes]),
        sst_bytes: i.([:disk, :sst_bytes]),
        wal_files: i.([:disk, :wal_files]),
        collected_tombstones: i.([:sync, :counters, :collected_tombstones]),
        collected_elements: i.([:sync, :counters, :collected_elements]),
        log_entries: i.([:sync, :log_entries]),
        type_clashes: i.([:sync, :rejected, :type_clash]),
        peers_up: if(info == %{}, do: nil, else: Enum.count(i.([:sync, :peers]) || [], & &1.up)),
        sample_error: if(info == %{}, do: "info/1: no answer for 30 s", else: nil),
        peer_queue: queue,
        info_ms: div(t2 - t1, 1000),
        tokens_ms: div(t3 - t2, 1000)
      }
    end

    # Bytes of every carrier the BEAM's allocators hold (what it has mapped
    # for :erlang.memory/0's blocks, free space in carriers included).
    def beam_carriers do
      case :instrument.carriers() do
        {:ok, {_, carriers}} -> Enum.reduce(carriers, 0, &(elem(&1, 2) + &2))
        _ -> nil
      end
    end

    # info/1 asks the sync peer too (5 s call timeout): retry when it is
    # busy; nil after `budget_ms` without an answer.
    defp info_retry(budget_ms) do
      t0 = System.monotonic_time(:millisecond)

      Stream.repeatedly(fn ->
        try do
          ContextStore.info(ContextStore)
        catch
          :exit, {:timeout, _} ->
            if System.monotonic_time(:millisecond) - t0 > budget_ms, do: :failed, else: nil
        end
      end)
      |> Enum.find(&(is_map(&1) or &1 == :failed))
      |> case do
        :failed -> nil
        info -> info
      end
    end

    # Remove tokens held in the remove-wins sets of the id space (the shared
    # {:rw, k} and every churn id, which is an OR-Set one generation in five;
    # the NIF answers 0 for other types and for sets not in the hot tier).
    def remove_tokens(cfg) do
      store = Process.whereis(ContextStore)
      ids = for({:rw, _} = id <- shared_ids(cfg), do: id) ++ churn_ids(cfg)

      Enum.reduce(ids, 0, fn id, acc ->
        case Vsmcp.CRDT.Native.store_remove_tokens(store, id) do
          n when is_integer(n) -> acc + n
          {:ok, n} -> acc + n
          _ -> acc
        end
      end)
    end

    # Held tombstones and tokens, for the wait after the load.
    def held(cfg) do
      case info_retry(60_000) do
        nil -> {nil, remove_tokens(cfg)}
        info -> {info.crdts.tombstones, remove_tokens(cfg)}
      end
    end
  end

# --- runner -------------------------------------------------------------------
:persistent_term.put(:soak_load, [{node_mod, node_bin} | cluster_modules])

defmodule SoakBench do
  @moduledoc false

  alias Vsmcp.Test.Cluster

  @node_mod SoakBench.Node

  def now, do: :os.system_time(:microsecond)

  def call(n, fun, args, timeout \\ 60_000), do: Cluster.call(n, @node_mod, fun, args, timeout)

  def on_all(nodes, fun, timeout \\ 120_000) do
    nodes |> Enum.map(fn n -> Task.async(fn -> fun.(n) end) end) |> Task.await_many(timeout)
  end

  def loadavg do
    case File.read("/proc/loadavg") do
      {:ok, s} -> s |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "?"
    end
  end

  def load1 do
    case File.read("/proc/loadavg") do
      {:ok, s} -> s |> String.split() |> hd()
      _ -> ""
    end
  end

  # Poll `fun` every `interval` ms until truthy: {:ok, value, waited_ms} or {:timeout, last}.
  def eventually(fun, timeout_ms, interval \\ 50) do
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

  # --- OS figures of a node, read from the runner ------------------------------
  def proc_status(os_pid) do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, s} ->
        field = fn name ->
          case Regex.run(~r/#{name}:\s+(\d+) kB/, s) do
            [_, kb] -> String.to_integer(kb)
            _ -> nil
          end
        end

        %{rss_kb: field.("VmRSS"), rss_anon_kb: field.("RssAnon"), rss_file_kb: field.("RssFile")}

      _ ->
        %{rss_kb: nil, rss_anon_kb: nil, rss_file_kb: nil}
    end
  end

  # Resident memory by kind of mapping (/proc/<pid>/smaps): the brk heap
  # (glibc's main arena), glibc's other arenas (anonymous mappings at a
  # 64 MiB boundary that with the reserved ---p mapping after them make
  # 64 MiB: HEAP_MAX_SIZE), anonymous read-write mappings of 512 MiB or
  # more (mimalloc's arenas: the NIF's Rust allocations), other anonymous
  # mappings (BEAM carriers, large malloc chunks) and file-backed mappings.
  def smaps(os_pid) do
    case File.read("/proc/#{os_pid}/smaps") do
      {:ok, s} ->
        maps =
          s
          |> String.split("\n")
          |> Enum.reduce([], fn line, acc ->
            case Regex.run(~r/^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/, line) do
              [_, a, b, perms, path] ->
                [
                  %{
                    from: String.to_integer(a, 16),
                    to: String.to_integer(b, 16),
                    perms: perms,
                    path: path,
                    rss: 0
                  }
                  | acc
                ]

              nil ->
                case {acc, Regex.run(~r/^Rss:\s+(\d+) kB/, line)} do
                  {[m | rest], [_, kb]} -> [%{m | rss: String.to_integer(kb)} | rest]
                  _ -> acc
                end
            end
          end)
          |> Enum.reverse()

        arena = 64 * 1024 * 1024

        kinds =
          maps
          |> Enum.chunk_every(2, 1, [nil])
          |> Enum.map(fn [m, next] ->
            kind =
              cond do
                m.path == "[heap]" ->
                  :heap

                m.path != "" ->
                  :file

                # mimalloc's arena (the NIF's Rust allocations): it reserves
                # 1 GiB at a time; the BEAM's 1 GiB literal area is ---p
                # where untouched and holds a few MiB.
                m.to - m.from >= 512 * 1024 * 1024 and String.starts_with?(m.perms, "rw") ->
                  :big

                rem(m.from, arena) == 0 and
                    (m.to - m.from == arena or
                       (next != nil and next.from == m.to and next.perms == "---p" and
                          next.path == "" and next.to - m.from == arena)) ->
                  :arena

                true ->
                  :anon
              end

            {kind, m.rss}
          end)

        sum = fn k ->
          kinds |> Enum.filter(&(elem(&1, 0) == k)) |> Enum.map(&elem(&1, 1)) |> Enum.sum()
        end

        %{
          smaps_heap_kb: sum.(:heap),
          smaps_arena_kb: sum.(:arena),
          smaps_big_kb: sum.(:big),
          smaps_anon_kb: sum.(:anon),
          smaps_file_kb: sum.(:file),
          arenas: Enum.count(kinds, &(elem(&1, 0) == :arena))
        }

      _ ->
        %{}
    end
  end

  # Open file descriptors by kind (readlink of each /proc/<pid>/fd entry).
  def fds(os_pid) do
    dir = "/proc/#{os_pid}/fd"

    kinds =
      case File.ls(dir) do
        {:ok, entries} ->
          Enum.map(entries, fn e ->
            case :file.read_link_all(String.to_charlist(Path.join(dir, e))) do
              {:ok, target} -> fd_kind(List.to_string(target))
              _ -> :gone
            end
          end)

        _ ->
          []
      end
      |> Enum.reject(&(&1 == :gone))

    freq = Enum.frequencies(kinds)

    %{
      fds: length(kinds),
      fd_sst: Map.get(freq, :sst, 0),
      fd_wal: Map.get(freq, :wal, 0),
      fd_file: Map.get(freq, :file, 0),
      fd_socket: Map.get(freq, :socket, 0),
      fd_pipe: Map.get(freq, :pipe, 0),
      fd_anon: Map.get(freq, :anon, 0),
      fd_other: Map.get(freq, :other, 0)
    }
  end

  defp fd_kind("socket:" <> _), do: :socket
  defp fd_kind("pipe:" <> _), do: :pipe
  defp fd_kind("anon_inode:" <> _), do: :anon

  defp fd_kind("/" <> _ = path) do
    cond do
      String.ends_with?(path, ".sst") -> :sst
      String.ends_with?(path, ".log") -> :wal
      true -> :file
    end
  end

  defp fd_kind(_), do: :other

  # --- partitions ----------------------------------------------------------------
  def patterns([a, b, c]) do
    [
      {"n1 cut off", [a], [b, c]},
      {"n2 cut off", [b], [a, c]},
      {"n1-n3 only", [a], [c]},
      {"n3 cut off", [c], [a, b]},
      {"n1-n2 only", [a], [b]},
      {"n2-n3 only", [b], [c]}
    ]
  end

  # Runs in its own process: partition i starts at t0 + every/2 + i*every
  # and lasts `len` s; sends {:partition, label, from_us, to_us, pairs} to
  # `parent` after each heal; stops (healed) on {:stop, from}.
  def partitioner(nodes, cfg, t0, parent) do
    pats = patterns(nodes)
    every = cfg.partition_every * 1_000_000
    len = cfg.partition_s * 1_000_000
    starts = Stream.iterate(t0 + div(every, 2), &(&1 + every))

    starts
    |> Stream.with_index()
    |> Stream.take_while(fn {s, _} -> s + len <= t0 + cfg.duration * 1_000_000 end)
    |> Enum.reduce_while(:ok, fn {s, i}, :ok ->
      if wait_until(s) == :stop do
        {:halt, :stopped}
      else
        {label, ga, gb} = Enum.at(pats, rem(i, length(pats)))
        from = now()
        :ok = Cluster.partition(ga, gb)
        cut = now()
        stopped = wait_until(from + len) == :stop
        heal_from = now()
        :ok = Cluster.heal(ga, gb)
        to = now()
        pairs = for x <- ga, y <- gb, do: {x.index, y.index}

        send(
          parent,
          {:partition,
           %{label: label, from: from, cut: cut, heal: heal_from, to: to, pairs: pairs}}
        )

        if stopped, do: {:halt, :stopped}, else: {:cont, :ok}
      end
    end)

    receive do
      {:stop, from} -> send(from, :partitioner_done)
    end
  end

  defp wait_until(t) do
    ms = max(div(t - now(), 1000), 0)

    receive do
      {:stop, from} ->
        # Re-deliver for the final receive.
        send(self(), {:stop, from})
        :stop
    after
      ms -> :ok
    end
  end

  # --- probe lag -------------------------------------------------------------
  # State per (writer, reader): {pending writes [{seq, tw}], carried reads
  # [{seq, tr}]}. Returns {state, resolved [{w, r, tw, lat_us}]}.
  def resolve_probes(state, writes_by_node, reads_by_node, n) do
    pairs = for w <- 0..(n - 1), r <- 0..(n - 1), w != r, do: {w, r}

    Enum.reduce(pairs, {state, []}, fn {w, r}, {st, acc} ->
      {pending, carried} = Map.get(st, {w, r}, {[], []})
      new_writes = Map.get(writes_by_node, w, [])

      new_reads = for {^w, s, t} <- Map.get(reads_by_node, r, []), do: {s, t}

      pending = pending ++ new_writes
      reads = carried ++ new_reads
      {resolved, still} = walk(pending, reads, [])
      max_written = Enum.reduce(pending, 0, fn {s, _}, m -> max(s, m) end)
      carried = Enum.filter(reads, fn {s, _} -> s > max_written end)
      res = for {tw, lat} <- resolved, do: {w, r, tw, lat}
      {Map.put(st, {w, r}, {still, carried}), res ++ acc}
    end)
  end

  defp walk([], _reads, acc), do: {Enum.reverse(acc), []}
  defp walk(pending, [], acc), do: {Enum.reverse(acc), pending}

  defp walk([{k, tw} | rest] = pending, [{s, tr} | more] = reads, acc) do
    if s >= k,
      do: walk(rest, reads, [{tw, max(tr - tw, 0)} | acc]),
      else: walk(pending, more, acc)
  end

  # Age (µs) of the oldest probe not yet visible on reader r, at `t`.
  def pending_age(state, r, t) do
    state
    |> Enum.filter(fn {{_w, rr}, _} -> rr == r end)
    |> Enum.flat_map(fn {_, {pending, _}} -> Enum.map(pending, fn {_, tw} -> t - tw end) end)
    |> Enum.max(fn -> 0 end)
    |> max(0)
  end

  def percentile([], _p), do: nil

  def percentile(sorted, p),
    do: Enum.at(sorted, min(length(sorted) - 1, trunc(length(sorted) * p)))

  def ms(nil), do: nil
  def ms(us), do: Float.round(us / 1000, 2)

  # --- CSV ----------------------------------------------------------------------
  @columns ~w(t_s node ops ops_per_s errors skipped deletes lag_n lag_p50_ms lag_max_ms
              lag_pending_ms rss_kb rss_anon_kb rss_file_kb smaps_heap_kb smaps_arena_kb
              arenas smaps_big_kb smaps_anon_kb smaps_file_kb beam_carriers glibc_kb anon_minus_beam_kb fds fd_sst fd_wal fd_file
              fd_socket fd_pipe fd_anon fd_other beam_total beam_processes beam_binary
              beam_ets beam_code beam_atom beam_system process_count port_count
              tombstones tokens hot warm hot_bytes warm_bytes memtable_bytes
              block_cache_bytes table_readers_bytes nif_live_bytes nif_resident_bytes sst_bytes wal_files
              collected_tombstones collected_elements log_entries type_clashes peers_up peer_queue
              info_ms tokens_ms sample_error partition load1)a

  def columns, do: @columns

  def write_csv(path, rows) do
    File.write!(path, Enum.join(@columns, ",") <> "\n")
    append_csv(path, rows)
  end

  # Rows are appended as they are sampled: a run that fails keeps them.
  def append_csv(path, rows) do
    lines =
      Enum.map(rows, fn row ->
        Enum.map_join(@columns, ",", fn c -> csv_value(Map.get(row, c)) end) <> "\n"
      end)

    File.write!(path, lines, [:append])
  end

  defp csv_value(nil), do: ""

  defp csv_value(v) when is_binary(v),
    do: if(v == "", do: "", else: ~s("#{String.replace(v, ~s("), "'")}"))

  defp csv_value(v), do: to_string(v)

  # --- SVG ----------------------------------------------------------------------
  @colors ["#1f77b4", "#d62728", "#2ca02c"]
  @w 1000
  @left 70
  @right 150
  @panel_h 170
  @gap 50

  def svg(rows, partitions, cfg, title) do
    panels = [
      {"Throughput (ops/s per node)", :linear, [{:ops_per_s, "", nil}]},
      {"Convergence lag per reader (ms, log): p50 solid, max dashed, oldest probe not yet seen dotted",
       :log, [{:lag_p50_ms, "", nil}, {:lag_max_ms, "6,4", nil}, {:lag_pending_ms, "1,3", nil}]},
      {"RSS (MiB) solid, NIF heap resident (jemalloc) dotted, NIF heap live dash-dot, :erlang.memory(:total) dashed",
       :linear,
       [
         {:rss_kb, "", 1 / 1024},
         {:nif_resident_bytes, "1,3", 1 / 1_048_576},
         {:nif_live_bytes, "8,3,2,3", 1 / 1_048_576},
         {:beam_total, "6,4", 1 / 1_048_576}
       ]},
      {"Open file handles per node", :linear, [{:fds, "", nil}]},
      {"Delete tombstones held solid, remove tokens held dashed", :linear,
       [{:tombstones, "", nil}, {:tokens, "6,4", nil}]}
    ]

    h = 90 + length(panels) * (@panel_h + @gap) + 20
    # Samples can end a little after --duration (a slow sample delays the next).
    x_max = Enum.reduce(rows, cfg.duration * 1.0, &max(&1.t_s * 1.0, &2))

    body =
      panels
      |> Enum.with_index()
      |> Enum.map(fn {{ptitle, scale, series}, i} ->
        y0 = 90 + i * (@panel_h + @gap)
        panel(rows, partitions, x_max, y0, ptitle, scale, series)
      end)

    legend =
      for {c, i} <- Enum.with_index(@colors) do
        x = @w - @right + 20
        y = 100 + i * 18

        ~s(<line x1="#{x}" y1="#{y}" x2="#{x + 24}" y2="#{y}" stroke="#{c}" stroke-width="2"/>) <>
          ~s(<text x="#{x + 30}" y="#{y + 4}">n#{i + 1}</text>)
      end ++
        [
          ~s(<rect x="#{@w - @right + 20}" y="#{100 + 3 * 18 - 6}" width="24" height="12" fill="#f4b6b6" fill-opacity="0.5"/>),
          ~s(<text x="#{@w - @right + 50}" y="#{100 + 3 * 18 + 4}">partition</text>)
        ]

    [
      ~s(<?xml version="1.0" encoding="UTF-8"?>\n),
      ~s(<svg xmlns="http://www.w3.org/2000/svg" width="#{@w}" height="#{h}" viewBox="0 0 #{@w} #{h}" font-family="sans-serif" font-size="11">\n),
      ~s(<rect width="#{@w}" height="#{h}" fill="white"/>\n),
      ~s(<text x="#{@left}" y="24" font-size="14" font-weight="bold">#{esc(title)}</text>\n),
      ~s(<text x="#{@left}" y="42">#{esc("time (s) since the load started; one sample per node every #{cfg.interval} s")}</text>\n),
      Enum.join(legend, "\n"),
      "\n",
      body,
      "</svg>\n"
    ]
    |> IO.iodata_to_binary()
  end

  defp panel(rows, partitions, x_max, y0, title, scale, series) do
    pw = @w - @left - @right
    x_of = fn t -> @left + t / x_max * pw end

    values =
      for {key, _dash, f} <- series, row <- rows, v = Map.get(row, key), is_number(v) do
        if f, do: v * f, else: v
      end

    {y_of, ticks} =
      case scale do
        :log ->
          hi = max(10, Enum.max(values, fn -> 10 end))
          top = :math.pow(10, Float.ceil(:math.log10(hi)))
          lo = 1.0
          span = :math.log10(top) - :math.log10(lo)

          y_of = fn v ->
            v = max(v, lo)
            y0 + @panel_h - (:math.log10(v) - :math.log10(lo)) / span * @panel_h
          end

          ticks = for e <- 0..round(:math.log10(top)), do: :math.pow(10, e)
          {y_of, ticks}

        :linear ->
          hi = max(Enum.max(values, fn -> 1 end) * 1.1, 1)
          step = nice_step(hi / 4)
          top = Float.ceil(hi / step) * step
          y_of = fn v -> y0 + @panel_h - v / top * @panel_h end
          ticks = for k <- 0..round(top / step), do: k * step
          {y_of, ticks}
      end

    shade =
      for p <- partitions do
        x1 = x_of.(p.from_s)
        x2 = x_of.(p.to_s)

        ~s(<rect x="#{f(x1)}" y="#{y0}" width="#{f(max(x2 - x1, 1))}" height="#{@panel_h}" fill="#f4b6b6" fill-opacity="0.5"/>) <>
          if(y0 == 90,
            do:
              ~s(<text x="#{f(x1)}" y="#{y0 - 3}" font-size="9" fill="#a33">#{esc(p.label)}</text>),
            else: ""
          )
      end

    grid =
      for v <- ticks do
        y = y_of.(v)

        ~s(<line x1="#{@left}" y1="#{f(y)}" x2="#{@left + pw}" y2="#{f(y)}" stroke="#ddd"/>) <>
          ~s(<text x="#{@left - 5}" y="#{f(y + 4)}" text-anchor="end">#{tick_label(v)}</text>)
      end

    x_step = if x_max > 120, do: 60, else: 10

    xgrid =
      for t <- 0..trunc(x_max)//x_step do
        x = x_of.(t)

        ~s(<line x1="#{f(x)}" y1="#{y0}" x2="#{f(x)}" y2="#{y0 + @panel_h}" stroke="#eee"/>) <>
          ~s(<text x="#{f(x)}" y="#{y0 + @panel_h + 14}" text-anchor="middle">#{t}</text>)
      end

    lines =
      for {key, dash, factor} <- series, node <- 0..2 do
        pts =
          rows
          |> Enum.filter(&(&1.node == node + 1))
          |> Enum.flat_map(fn row ->
            case Map.get(row, key) do
              v when is_number(v) ->
                v = if factor, do: v * factor, else: v
                ["#{f(x_of.(row.t_s))},#{f(y_of.(v))}"]

              _ ->
                []
            end
          end)

        dash_attr = if dash == "", do: "", else: ~s( stroke-dasharray="#{dash}")

        ~s(<polyline fill="none" stroke="#{Enum.at(@colors, node)}" stroke-width="1.5"#{dash_attr} points="#{Enum.join(pts, " ")}"/>)
      end

    [
      ~s(<text x="#{@left}" y="#{y0 - 14}" font-weight="bold">#{esc(title)}</text>\n),
      Enum.join(shade, "\n"),
      "\n",
      Enum.join(xgrid, "\n"),
      "\n",
      Enum.join(grid, "\n"),
      "\n",
      ~s(<rect x="#{@left}" y="#{y0}" width="#{pw}" height="#{@panel_h}" fill="none" stroke="#888"/>\n),
      Enum.join(lines, "\n"),
      "\n"
    ]
  end

  defp nice_step(raw) do
    mag = :math.pow(10, Float.floor(:math.log10(max(raw, 1.0e-9))))
    n = raw / mag

    cond do
      n <= 1 -> 1 * mag
      n <= 2 -> 2 * mag
      n <= 5 -> 5 * mag
      true -> 10 * mag
    end
  end

  defp tick_label(v) when v >= 1_000_000, do: "#{fmt(v / 1_000_000)}M"
  defp tick_label(v) when v >= 10_000, do: "#{fmt(v / 1000)}k"
  defp tick_label(v), do: fmt(v)

  defp fmt(v) when is_float(v) do
    if v == Float.round(v),
      do: Integer.to_string(round(v)),
      else: :erlang.float_to_binary(v, decimals: 1)
  end

  defp fmt(v), do: to_string(v)

  defp f(x), do: :erlang.float_to_binary(x * 1.0, decimals: 1)

  defp esc(s),
    do:
      s
      |> String.replace("&", "&amp;")
      |> String.replace("<", "&lt;")
      |> String.replace(">", "&gt;")

  # --- summary --------------------------------------------------------------------
  def mean([]), do: nil
  def mean(xs), do: Enum.sum(xs) / length(xs)

  # Least-squares slope of ys over xs (per unit of x).
  def slope(points) when length(points) < 2, do: nil

  def slope(points) do
    n = length(points)
    mx = Enum.sum(Enum.map(points, &elem(&1, 0))) / n
    my = Enum.sum(Enum.map(points, &elem(&1, 1))) / n
    sxx = Enum.sum(Enum.map(points, fn {x, _} -> (x - mx) * (x - mx) end))
    sxy = Enum.sum(Enum.map(points, fn {x, y} -> (x - mx) * (y - my) end))
    if sxx == 0, do: nil, else: sxy / sxx
  end

  def in_window(rows, node, {a, b}),
    do: Enum.filter(rows, &(&1.node == node and &1.t_s > a and &1.t_s <= b))

  def r1(nil), do: "-"
  def r1(x) when is_float(x), do: :erlang.float_to_binary(x, decimals: 1)
  def r1(x), do: to_string(x)
end

alias SoakBench, as: B
alias Vsmcp.Test.Cluster

{opts, rest, invalid} =
  OptionParser.parse(System.argv(),
    strict: [
      duration: :integer,
      interval: :integer,
      out: :string,
      rate: :integer,
      workers: :integer,
      ids: :integer,
      partition_every: :integer,
      partition_s: :integer,
      probe_ms: :integer,
      seed: :integer
    ]
  )

if rest != [] or invalid != [], do: raise("unknown arguments: #{inspect(rest ++ invalid)}")

cfg = %{
  duration: Keyword.get(opts, :duration, 600),
  interval: Keyword.get(opts, :interval, 5),
  out: Keyword.get(opts, :out, Path.join(__DIR__, "soak")),
  rate: Keyword.get(opts, :rate, 2_000),
  workers: Keyword.get(opts, :workers, 4),
  ids: Keyword.get(opts, :ids, 2_000),
  partition_every: Keyword.get(opts, :partition_every, 60),
  partition_s: Keyword.get(opts, :partition_s, 10),
  probe_ms: Keyword.get(opts, :probe_ms, 250),
  seed: Keyword.get(opts, :seed, 16),
  nodes: 3
}

File.mkdir_p!(cfg.out)
command = "MIX_ENV=prod mix run bench/soak.exs #{Enum.join(System.argv(), " ")}" |> String.trim()

IO.puts("# vsmcp_crdt soak (bench/soak.exs)")

IO.puts(
  "OTP #{System.otp_release()}, Elixir #{System.version()}, schedulers #{System.schedulers_online()}, " <>
    "#{DateTime.utc_now() |> DateTime.truncate(:second) |> DateTime.to_iso8601()}"
)

IO.puts("command: #{command}")
IO.puts("config: #{inspect(Map.delete(cfg, :out))}, out #{cfg.out}")
IO.puts("load average at start: #{B.loadavg()}")

tmp = Path.join(System.tmp_dir!(), "vsmcp_soak_#{System.unique_integer([:positive])}")
File.mkdir_p!(tmp)

nodes =
  Cluster.start(3,
    tmp_dir: tmp,
    cleanup: :manual,
    load: :persistent_term.get(:soak_load),
    prefix: "soak",
    app_env: [{:logger, :level, :warning}],
    pubsub: Vsmcp.PubSub
  )

[n1 | _] = nodes
node_cfg = fn n -> Map.merge(Map.drop(cfg, [:out]), %{me: n.index}) end

try do
  for n <- nodes, do: :ok = B.call(n, :start_default, [])

  {:ok, _, ms} =
    B.eventually(fn -> Enum.all?(nodes, &(B.call(&1, :up_peers, []) == 2)) end, 30_000)

  IO.puts(
    "3 nodes up (#{Enum.map_join(nodes, ", ", &"#{&1.node} os pid #{&1.os_pid}")}); " <>
      "default stores met after #{ms} ms; #{inspect(B.call(n1, :transport, []))}"
  )

  :ok = B.call(n1, :create_shared, [node_cfg.(n1)], 120_000)
  expected = length(SoakBench.Node.shared_ids(cfg)) + cfg.nodes

  {:ok, _, ms} =
    B.eventually(
      fn -> Enum.all?(nodes, &(B.call(&1, :shared_present, [node_cfg.(&1)]) == expected)) end,
      120_000,
      200
    )

  IO.puts(
    "#{expected} shared ids created on n1, present everywhere after #{ms} ms; churn ids " <>
      "#{length(SoakBench.Node.churn_ids(cfg))}; load #{cfg.rate} ops/s per node from " <>
      "#{cfg.workers} workers"
  )

  for n <- nodes, do: :ok = B.call(n, :start_probes, [node_cfg.(n)])
  for n <- nodes, do: :ok = B.call(n, :start_load, [node_cfg.(n)])
  t0 = B.now()
  parent = self()
  partitioner = spawn_link(fn -> B.partitioner(nodes, cfg, t0, parent) end)

  # --- sampling loop -------------------------------------------------------------
  sample = fn t_target, state ->
    wait = max(div(t_target - B.now(), 1000), 0)
    Process.sleep(wait)
    t = B.now()

    # A node that does not answer gives a row with the runner's figures
    # (RSS, fds, smaps) and the reason in `sample_error`; its probes are
    # drained at the next sample.
    samples =
      B.on_all(
        nodes,
        fn n ->
          s =
            try do
              B.call(n, :sample, [node_cfg.(n)], 90_000)
            catch
              kind, reason ->
                %{
                  t: B.now(),
                  sample_error: "sample: #{kind} #{inspect(reason) |> String.slice(0, 120)}"
                }
            end

          os = B.proc_status(n.os_pid)
          fd = B.fds(n.os_pid) |> Map.merge(B.smaps(n.os_pid))

          {writes, reads} =
            try do
              B.call(n, :drain_probes, [], 60_000)
            catch
              _, _ -> {[], []}
            end

          s = s |> Map.merge(os) |> Map.merge(fd)

          derived = %{
            glibc_kb: (s[:smaps_heap_kb] || 0) + (s[:smaps_arena_kb] || 0),
            anon_minus_beam_kb:
              s[:smaps_anon_kb] && s[:beam_carriers] &&
                s.smaps_anon_kb - div(s.beam_carriers, 1024)
          }

          {Map.merge(s, derived), writes, reads}
        end,
        300_000
      )

    writes = Map.new(Enum.with_index(samples), fn {{_, w, _}, i} -> {i, w} end)
    reads = Map.new(Enum.with_index(samples), fn {{_, _, r}, i} -> {i, r} end)
    {probe_state, resolved} = B.resolve_probes(state.probe_state, writes, reads, 3)

    rows =
      for {{s, _, _}, i} <- Enum.with_index(samples) do
        prev = Map.get(state.prev, i)
        lats = for({_w, ^i, _tw, lat} <- resolved, do: lat) |> Enum.sort()

        dt_s = if prev, do: (s.t - prev.t) / 1_000_000, else: (s.t - t0) / 1_000_000

        ops_per_s =
          if s[:ops],
            do: round((s.ops - if(prev, do: prev.ops, else: 0)) / max(dt_s, 0.001))

        Map.merge(s, %{
          t_s: Float.round((t - t0) / 1_000_000, 1),
          node: i + 1,
          ops_per_s: ops_per_s,
          lag_n: length(lats),
          lag_p50_ms: B.ms(B.percentile(lats, 0.5)),
          lag_max_ms: B.ms(List.last(lats)),
          lag_pending_ms: B.ms(B.pending_age(probe_state, i, t)),
          partition: state.cut,
          load1: B.load1()
        })
      end

    # The last answered sample of each node, for the next ops/s.
    prev =
      samples
      |> Enum.with_index()
      |> Enum.reduce(state.prev, fn {{s, _, _}, i}, acc ->
        if s[:ops], do: Map.put(acc, i, s), else: acc
      end)

    {rows, resolved, probe_state, prev}
  end

  collect_partitions = fn acc ->
    receive do
      {:partition, p} -> {:more, [p | acc]}
    after
      0 -> {:done, acc}
    end
  end

  drain_parts = fn drain_parts, acc ->
    case collect_partitions.(acc) do
      {:more, acc} -> drain_parts.(drain_parts, acc)
      {:done, acc} -> acc
    end
  end

  n_samples = div(cfg.duration, cfg.interval)

  header =
    "| t (s) | ops/s n1/n2/n3 | lag p50/max ms (pending) | RSS MiB | fds | tombstones | tokens | beam MiB | info ms | load |"

  IO.puts("\n" <> header)
  IO.puts("|" <> String.duplicate("---|", 10))
  csv = Path.join(cfg.out, "soak.csv")
  B.write_csv(csv, [])

  state =
    Enum.reduce(
      1..n_samples,
      %{probe_state: %{}, prev: %{}, rows: [], resolved: [], partitions: [], cut: ""},
      fn k, state ->
        {rows, resolved, probe_state, prev} = sample.(t0 + k * cfg.interval * 1_000_000, state)
        partitions = drain_parts.(drain_parts, state.partitions)

        by = fn key, fun -> Enum.map_join(rows, "/", &fun.(Map.get(&1, key))) end
        mib = fn v -> if v, do: div(v, 1024), else: "-" end

        IO.puts(
          "| #{hd(rows).t_s} | #{by.(:ops_per_s, & &1)} | " <>
            "#{Enum.map_join(rows, " ", &"#{&1.lag_p50_ms}/#{&1.lag_max_ms}(#{&1.lag_pending_ms})")} | " <>
            "#{by.(:rss_kb, mib)} | #{by.(:fds, & &1)} | #{by.(:tombstones, & &1)} | " <>
            "#{by.(:tokens, & &1)} | #{by.(:beam_total, &(&1 && div(&1, 1_048_576)))} | " <>
            "#{by.(:info_ms, & &1)} | #{hd(rows).load1} |"
        )

        for r <- rows,
            r[:sample_error],
            do: IO.puts("sample error on n#{r.node}: #{r.sample_error}")

        B.append_csv(csv, rows)

        %{
          state
          | probe_state: probe_state,
            prev: prev,
            rows: state.rows ++ rows,
            resolved: resolved ++ state.resolved,
            partitions: partitions
        }
      end
    )

  # --- stop --------------------------------------------------------------------
  send(partitioner, {:stop, self()})

  receive do
    :partitioner_done -> :ok
  after
    60_000 -> raise "partitioner did not stop"
  end

  partitions = drain_parts.(drain_parts, state.partitions) |> Enum.reverse()
  t_stop = B.now()
  for n <- nodes, do: :ok = B.call(n, :stop_load, [])
  Process.sleep(cfg.probe_ms * 4)
  for n <- nodes, do: :ok = B.call(n, :stop_probes, [])

  {conv, _, conv_ms} =
    case B.eventually(
           fn ->
             ds = Enum.map(nodes, &B.call(&1, :digest, [node_cfg.(&1)], 120_000))
             length(Enum.uniq(ds)) == 1
           end,
           120_000,
           200
         ) do
      {:ok, v, ms} -> {:ok, v, ms}
      {:timeout, v} -> {:timeout, v, nil}
    end

  conv_after_stop = div(B.now() - t_stop, 1000)

  {held_res, held_ms} =
    case B.eventually(
           fn ->
             held = Enum.map(nodes, &B.call(&1, :held, [node_cfg.(&1)], 120_000))
             if Enum.all?(held, &(&1 == {0, 0})), do: held, else: nil
           end,
           120_000,
           500
         ) do
      {:ok, v, ms} -> {v, ms}
      {:timeout, v} -> {v, nil}
    end

  held_after = Enum.map(nodes, &B.call(&1, :held, [node_cfg.(&1)], 120_000))

  # --- outputs -------------------------------------------------------------------
  rows = state.rows

  parts =
    for p <- partitions do
      Map.merge(p, %{
        from_s: Float.round((p.from - t0) / 1_000_000, 1),
        to_s: Float.round((p.to - t0) / 1_000_000, 1)
      })
    end

  # Tag each row with the partition it falls in.
  rows =
    Enum.map(rows, fn row ->
      cut = Enum.find(parts, fn p -> row.t_s >= p.from_s and row.t_s <= p.to_s end)
      %{row | partition: if(cut, do: cut.label, else: "")}
    end)

  # Rewritten with the partition of each row.
  B.write_csv(csv, rows)

  File.write!(
    Path.join(cfg.out, "soak-partitions.csv"),
    "label,from_s,to_s,cut_ms,heal_ms\n" <>
      Enum.map_join(parts, "", fn p ->
        "\"#{p.label}\",#{p.from_s},#{p.to_s},#{div(p.cut - p.from, 1000)},#{div(p.to - p.heal, 1000)}\n"
      end)
  )

  title =
    "vsmcp_crdt soak: 3 nodes, #{cfg.rate} ops/s per node, #{cfg.duration} s, " <>
      "partition #{cfg.partition_s} s every #{cfg.partition_every} s"

  svg_path = Path.join(cfg.out, "soak.svg")
  File.write!(svg_path, B.svg(rows, parts, cfg, title))

  # --- summary -------------------------------------------------------------------
  m = min(60, div(cfg.duration, 6))
  first_warm = {m, 2 * m}
  last = {cfg.duration - m, cfg.duration}
  warm2 = {m, 3 * m}
  last2 = {cfg.duration - 2 * m, cfg.duration}
  win = fn {a, b} -> "#{a}-#{b} s" end
  resolved = state.resolved

  in_parts = fn tw ->
    t = (tw - t0) / 1_000_000
    Enum.any?(parts, fn p -> t >= p.from_s and t <= p.to_s + 2 end)
  end

  lag_stats = fn {a, b}, filter ->
    lats =
      for {_w, _r, tw, lat} <- resolved,
          t = (tw - t0) / 1_000_000,
          t > a and t <= b,
          filter.(tw),
          do: lat

    s = Enum.sort(lats)
    "#{B.ms(B.percentile(s, 0.5))} / #{B.ms(B.percentile(s, 0.99))} / #{B.ms(List.last(s))}"
  end

  per_node = fn window, fun ->
    Enum.map_join(1..3, " / ", fn n -> fun.(B.in_window(rows, n, window)) end)
  end

  avg = fn key, scale ->
    fn rs ->
      B.r1(B.mean(for r <- rs, v = Map.get(r, key), is_number(v), do: v * scale))
    end
  end

  mx = fn key ->
    fn rs -> to_string(Enum.max(for(r <- rs, v = Map.get(r, key), do: v), fn -> "-" end)) end
  end

  IO.puts("\n## Summary\n")

  IO.puts(
    "| figure (n1 / n2 / n3) | first warm minute (#{win.(first_warm)}) | last minute (#{win.(last)}) |"
  )

  IO.puts("|---|---|---|")

  table = [
    {"throughput, ops/s (mean)", avg.(:ops_per_s, 1)},
    {"RSS, MiB (mean)", avg.(:rss_kb, 1 / 1024)},
    {"NIF heap live, MiB (mean)", avg.(:nif_live_bytes, 1 / 1_048_576)},
    {"NIF heap resident (jemalloc), MiB (mean)", avg.(:nif_resident_bytes, 1 / 1_048_576)},
    {":erlang.memory(:total), MiB (mean)", avg.(:beam_total, 1 / 1_048_576)},
    {"open fds (mean)", avg.(:fds, 1)},
    {"open fds (max)", mx.(:fds)},
    {"tombstones held (mean)", avg.(:tombstones, 1)},
    {"tombstones held (max)", mx.(:tombstones)},
    {"remove tokens held (mean)", avg.(:tokens, 1)},
    {"remove tokens held (max)", mx.(:tokens)},
    {"info/1 ms (max)", mx.(:info_ms)}
  ]

  for {label, fun} <- table do
    IO.puts("| #{label} | #{per_node.(first_warm, fun)} | #{per_node.(last, fun)} |")
  end

  IO.puts(
    "| lag p50 / p99 / max ms, all probes | #{lag_stats.(first_warm, fn _ -> true end)} | " <>
      "#{lag_stats.(last, fn _ -> true end)} |"
  )

  IO.puts(
    "| lag p50 / p99 / max ms, probes written outside partitions (+2 s) | " <>
      "#{lag_stats.(first_warm, &(not in_parts.(&1)))} | #{lag_stats.(last, &(not in_parts.(&1)))} |"
  )

  IO.puts("\n## Flatness (#{win.(warm2)} vs #{win.(last2)})\n")

  IO.puts(
    "| node | metric | mean #{win.(warm2)} | mean #{win.(last2)} | change per min (means) | slope per min (fit, t > #{m} s) |"
  )

  IO.puts("|---|---|---|---|---|---|")
  span_min = (cfg.duration - m - 2 * m) / 60

  for n <- 1..3,
      {label, key, scale} <- [
        {"RSS MiB", :rss_kb, 1 / 1024},
        {"RssAnon MiB", :rss_anon_kb, 1 / 1024},
        {"glibc heap + arenas MiB (smaps)", :glibc_kb, 1 / 1024},
        {"1 GiB+ rw mappings MiB (smaps; mimalloc's arena when the NIF used it)", :smaps_big_kb,
         1 / 1024},
        {"NIF heap live MiB", :nif_live_bytes, 1 / 1_048_576},
        {"NIF heap resident MiB", :nif_resident_bytes, 1 / 1_048_576},
        {"other anon MiB (smaps)", :smaps_anon_kb, 1 / 1024},
        {"BEAM carriers MiB", :beam_carriers, 1 / 1_048_576},
        {"other anon - BEAM carriers MiB (RocksDB, jemalloc's NIF heap)", :anon_minus_beam_kb,
         1 / 1024},
        {"BEAM total MiB", :beam_total, 1 / 1_048_576},
        {"BEAM processes MiB", :beam_processes, 1 / 1_048_576},
        {"BEAM binary MiB", :beam_binary, 1 / 1_048_576},
        {"BEAM ets MiB", :beam_ets, 1 / 1_048_576},
        {"hot_bytes MiB", :hot_bytes, 1 / 1_048_576},
        {"memtable MiB", :memtable_bytes, 1 / 1_048_576},
        {"fds", :fds, 1},
        {"fds sst", :fd_sst, 1},
        {"fds socket", :fd_socket, 1}
      ] do
    vals = fn w -> for r <- B.in_window(rows, n, w), v = Map.get(r, key), do: v * scale end
    a = B.mean(vals.(warm2))
    b = B.mean(vals.(last2))

    pts = for r <- rows, r.node == n, r.t_s > m, v = Map.get(r, key), do: {r.t_s / 60, v * scale}

    change = if a && b && span_min > 0, do: (b - a) / span_min, else: nil

    IO.puts(
      "| n#{n} | #{label} | #{B.r1(a)} | #{B.r1(b)} | #{B.r1(change && Float.round(change, 2))} | " <>
        "#{B.r1(B.slope(pts) && Float.round(B.slope(pts), 2))} |"
    )
  end

  totals =
    for n <- 1..3,
        do: rows |> Enum.filter(&(&1.node == n and &1[:tombstones] != nil)) |> List.last()

  failed_samples = for n <- 1..3, do: Enum.count(rows, &(&1.node == n and &1[:sample_error]))

  IO.puts(
    "\nsamples with an error (see sample_error) per node: #{Enum.join(failed_samples, " / ")}"
  )

  IO.puts(
    "\nops done per node #{Enum.map_join(totals, " / ", & &1.ops)}, failed #{Enum.map_join(totals, " / ", & &1.errors)}, " <>
      "skipped (behind schedule) #{Enum.map_join(totals, " / ", & &1.skipped)}, churn deletes " <>
      "#{Enum.map_join(totals, " / ", & &1.deletes)}; collected tombstones " <>
      "#{Enum.map_join(totals, " / ", & &1.collected_tombstones)}, collected elements " <>
      "#{Enum.map_join(totals, " / ", & &1.collected_elements)}, type clashes refused " <>
      "#{Enum.map_join(totals, " / ", & &1.type_clashes)}"
  )

  IO.puts(
    "partitions: " <>
      Enum.map_join(parts, "; ", fn p -> "#{p.label} #{p.from_s}-#{p.to_s} s" end)
  )

  IO.puts(
    "after the load stopped: all nodes hold equal values (digest of the #{length(SoakBench.Node.all_ids(cfg))} ids) " <>
      "#{inspect(conv)} #{conv_ms} ms after the first check (#{conv_after_stop} ms after the stop); " <>
      "tombstones and tokens all 0: #{if held_ms, do: "#{held_ms} ms later", else: "NOT within 120 s: #{inspect(held_res)}"}; " <>
      "now #{inspect(held_after)}"
  )

  IO.puts("wrote #{csv}, #{svg_path}, #{Path.join(cfg.out, "soak-partitions.csv")}")
  IO.puts("load average at end: #{B.loadavg()}")
after
  Cluster.stop(nodes)
  File.rm_rf(tmp)
end
