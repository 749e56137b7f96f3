# The host-application benchmark of issue 18: the store as VSMCP runs it.
#
#   MIX_ENV=prod mix run bench/host_app.exs                  # every phase, full sizes
#   MIX_ENV=prod mix run bench/host_app.exs --quick          # small sizes, a smoke test
#   MIX_ENV=prod mix run bench/host_app.exs --only memory --only start
#   MIX_ENV=prod mix run bench/host_app.exs --only memory --storage memory_budget=67108864
#
# Every node is a :peer node (test/support/cluster.ex) running
# `Phoenix.PubSub` (name `Vsmcp.PubSub`) and `Vsmcp.CRDT.Supervisor`: the
# default store, in the default location (`data/` under the node's working
# directory, fresh for each cluster), syncing with the other nodes' default
# stores on its default topic over Vsmcp.PubSub. Calls name no store
# (`ContextStore.increment(:id, 1)`); loops discard results (`Enum.each`,
# `Enum.reduce`, recursion), so no caller keeps returned values alive. Every
# timed loop runs on a node (a function of HostApp.Node loaded there, called
# with `Cluster.call`): the runner's distribution is not measured.
#
# Phases (`--only NAME`, repeatable or comma-separated; `--mem-sizes ""` runs
# only the per-type and set cases of memory):
#
#   memory  OS RSS growth (VmRSS) of a node for G-Counter ids each created and
#           incremented once on a fresh data dir (2 nodes, sync on), at
#           --mem-sizes (20k, 200k, 1M); per type at --type-n (200k):
#           pn_counter, or_set with one element, lww_register with a small
#           map; one OR-Set of --set-elements (100k) {:el, i} tuples
#   start   a node holding --start-n (1M) G-Counter ids is restarted (a new
#           OS process, the other node running); time from
#           `Vsmcp.CRDT.Supervisor.start_link/1` returning until each call
#           first answers, each polled from its own process (5 s call timeout)
#   values  one node: LWW set of an integer / %{v: i} / a four-key map,
#           register get of a four-key map, set get of 5,000 {:el, i} /
#           strings / integers against the copy floor, add returning the value
#   lowrate 3 nodes incrementing one shared counter at 100/s (and 2,000/s)
#           each for --low-s s (30): bytes handed to the transport per
#           increment, write-to-visible p50/p99 of a probe register
#   nodes   2, 4 and 8 nodes: convergence after a burst of --burst (10k)
#           increments, idle bytes/s and CPU per node over --idle-s s (30),
#           RSS per node, a new node catching up on --catchup (100k) ids
#
# Everything timed on a node is timestamped there with
# :os.system_time(:microsecond) (one machine, one clock). Results with
# machine, command and load average: bench/RESULTS-host_app.md.

cluster_modules = Code.require_file("../test/support/cluster.ex", __DIR__)

{:module, node_mod, node_bin, _} =
  defmodule HostApp.Node do
    @moduledoc false
    alias Vsmcp.CRDT.ContextStore

    def now, do: :os.system_time(:microsecond)

    # The host's supervision tree: the default store (Vsmcp.PubSub is
    # started by the cluster helper). Answers the µs start_link took.
    def start_default do
      Logger.configure(level: :warning)
      t0 = now()
      {:ok, sup} = Vsmcp.CRDT.Supervisor.start_link()
      t1 = now()
      Process.unlink(sup)
      t1 - t0
    end

    def up_peers do
      case ContextStore.sync_info() do
        %{peers: peers} -> Enum.count(peers, & &1.up)
        _ -> 0
      end
    catch
      :exit, _ -> 0
    end

    def rss_kb, do: status_kb(:os.getpid())

    def status_kb(os_pid) do
      status = File.read!("/proc/#{os_pid}/status")
      [_, kb] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
      String.to_integer(kb)
    end

    # utime + stime of this OS process, in clock ticks.
    def cpu_ticks do
      [_, rest] = File.read!("/proc/#{:os.getpid()}/stat") |> String.split(") ", parts: 2)
      fields = String.split(rest)
      String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
    end

    def gc_all do
      for p <- Process.list(), do: :erlang.garbage_collect(p)
      :ok
    end

    # RSS after GC of every process, with the store's own memory report.
    def memory_report do
      gc_all()
      info = retry(fn -> ContextStore.info() end)

      %{
        rss_kb: rss_kb(),
        beam_kb: div(:erlang.memory(:total), 1024),
        count: info.crdts.count,
        memory: info.memory,
        hot: info.hot,
        warm: info.warm,
        disk: Map.take(info.disk, [:live_sst_bytes, :wal_bytes]),
        log_entries: info.sync[:log_entries]
      }
    end

    # info/1 and sync_info/1 call the sync peer with a 5 s timeout.
    def retry(fun, budget_ms \\ 120_000) do
      t0 = System.monotonic_time(:millisecond)

      Stream.repeatedly(fn ->
        try do
          fun.()
        catch
          :exit, _ ->
            if System.monotonic_time(:millisecond) - t0 > budget_ms, do: raise("no answer")
            nil
        end
      end)
      |> Enum.find(&is_map/1)
    end

    def counters, do: retry(fn -> ContextStore.sync_info() end).counters

    # --- filling ----------------------------------------------------------------
    # `kind` ids {:h, i} for i in from..to, each created and written once.
    def fill(kind, from, to) do
      t0 = now()
      Enum.each(from..to, &fill_one(kind, &1))
      now() - t0
    end

    defp fill_one(:g_counter, i) do
      :ok = ContextStore.create({:h, i}, :g_counter)
      {:ok, 1} = ContextStore.increment({:h, i}, 1)
    end

    defp fill_one(:pn_counter, i) do
      :ok = ContextStore.create({:h, i}, :pn_counter)
      {:ok, 1} = ContextStore.increment({:h, i}, 1)
    end

    defp fill_one(:or_set, i) do
      :ok = ContextStore.create({:h, i}, :or_set)
      {:ok, _} = ContextStore.add({:h, i}, {:el, i})
    end

    defp fill_one(:lww_register, i) do
      :ok = ContextStore.create({:h, i}, :lww_register)
      {:ok, _} = ContextStore.set({:h, i}, %{v: i, at: 1_700_000_000_000 + i})
    end

    # One OR-Set :big of {:el, 1..n}. The adds answer :ok (`return: :ok`):
    # returning the growing set each time would be O(n^2) copying, which
    # is not what this fill measures. update/4 with return: needs the
    # store argument: the default store's name.
    def fill_set(n) do
      t0 = now()
      :ok = ContextStore.create(:big, :or_set)

      Enum.each(1..n, fn i ->
        :ok = ContextStore.update(ContextStore, :big, {:add, {:el, i}}, return: :ok)
      end)

      now() - t0
    end

    # How many of {:h, from..to} this node holds with a value.
    def present(from, to) do
      Enum.reduce(from..to, 0, fn i, acc ->
        case ContextStore.get({:h, i}) do
          {:ok, v} when v not in [nil, 0] -> acc + 1
          _ -> acc
        end
      end)
    end

    def set_size(id) do
      case ContextStore.member?(id, {:el, 1}) do
        {:ok, _} -> id |> ContextStore.get() |> elem(1) |> MapSet.size()
        _ -> 0
      end
    end

    # sync/2 writes everything pending to disk first, then runs a round with
    # the peers; with a peer busy taking in a large transfer the round can
    # outlast the timeout: the flush is done, the caller waits for the
    # data on the other node anyway. Answers :ok or {:timeout, ms}.
    def flush do
      t0 = System.monotonic_time(:millisecond)

      case ContextStore.sync(ContextStore, 60_000) do
        :ok -> :ok
        {:error, {:timeout, _}} -> {:timeout, System.monotonic_time(:millisecond) - t0}
      end
    end

    # --- start: poll each call from its own process -----------------------------
    def start_timed(probe_id, budget_ms) do
      Logger.configure(level: :warning)
      parent = self()
      t_call = now()
      {:ok, sup} = Vsmcp.CRDT.Supervisor.start_link()
      t0 = now()
      Process.unlink(sup)

      checks = [
        get: fn -> match?({:ok, _}, ContextStore.get(probe_id)) end,
        increment: fn -> match?({:ok, _}, ContextStore.increment(probe_id, 1)) end,
        info: fn -> is_map(ContextStore.info()) end,
        subscribe: fn -> ContextStore.subscribe(ContextStore, [probe_id], self()) == :ok end,
        stream_page: fn -> length(Enum.take(ContextStore.stream_crdts(), 1_000)) == 1_000 end,
        sync_info: fn -> is_map(ContextStore.sync_info()) end,
        get_metadata: fn -> match?({:ok, _}, ContextStore.get_metadata(probe_id)) end,
        peer_up: fn -> up_peers() > 0 end,
        digest_ready: fn -> ContextStore.sync_info()[:digest_ready] == true end,
        sync_round: fn -> up_peers() > 0 and ContextStore.sync(ContextStore, 5_000) == :ok end
      ]

      pids =
        for {name, check} <- checks do
          spawn(fn -> send(parent, {:first, name, poll_first(check, t0, budget_ms)}) end)
        end

      firsts =
        for _ <- pids, into: %{} do
          receive do
            {:first, name, r} -> {name, r}
          end
        end

      # The whole list, after everything answered.
      t1 = now()
      n = length(ContextStore.list_crdts())
      list_us = now() - t1
      %{start_link_us: t0 - t_call, firsts: firsts, list_crdts: {n, list_us}}
    end

    # {µs from t0 to the first truthy answer, attempts} or {:none, attempts}.
    defp poll_first(check, t0, budget_ms, attempts \\ 1) do
      ok =
        try do
          check.()
        catch
          :exit, _ -> false
        end

      cond do
        ok ->
          {now() - t0, attempts}

        now() - t0 > budget_ms * 1000 ->
          {:none, attempts}

        true ->
          Process.sleep(1)
          poll_first(check, t0, budget_ms, attempts + 1)
      end
    end

    # --- values -------------------------------------------------------------------
    defp rate(n, fun) do
      {us, :ok} = :timer.tc(fun)
      n / (us / 1_000_000)
    end

    def values(n, m, set_n) do
      :ok = ContextStore.create(:r, :lww_register)
      ints = List.to_tuple(Enum.to_list(1..n))
      small = List.to_tuple(for i <- 1..n, do: %{v: i})

      four =
        List.to_tuple(
          for i <- 1..n,
              do: %{id: i, name: "unit-#{i}", load: i * 0.5, tags: [:s1, :active]}
        )

      set_loop = fn values ->
        fn -> Enum.each(0..(n - 1), &({:ok, _} = ContextStore.set(:r, elem(values, &1)))) end
      end

      sets = [
        set_int: rate(n, set_loop.(ints)),
        set_small_map: rate(n, set_loop.(small)),
        set_four_key_map: rate(n, set_loop.(four))
      ]

      {:ok, %{id: _}} = ContextStore.get(:r)
      reg_get = rate(n, fn -> Enum.each(1..n, fn _ -> {:ok, _} = ContextStore.get(:r) end) end)

      set_kinds = [
        tuples: fn i -> {:el, i} end,
        strings: fn i -> "element-#{i}" end,
        integers: fn i -> i end
      ]

      gets =
        for {kind, el} <- set_kinds do
          id = {:set, kind}
          :ok = ContextStore.create(id, :or_set)

          Enum.each(1..set_n, fn i ->
            :ok = ContextStore.update(ContextStore, id, {:add, el.(i)}, return: :ok)
          end)

          {:ok, value} = ContextStore.get(id)
          ^set_n = MapSet.size(value)
          get = rate(m, fn -> Enum.each(1..m, fn _ -> {:ok, _} = ContextStore.get(id) end) end)
          holder = spawn_link(fn -> holder_loop(value) end)
          self_floor = rate(m, fn -> holder_gets(holder, m) end)
          send(holder, :stop)
          echo = spawn_link(fn -> echo_loop() end)
          round_floor = rate(m, fn -> round_trips(echo, value, m) end)
          send(echo, :stop)
          {kind, %{get: get, self_floor: self_floor, round_floor: round_floor}}
        end

      # add returning the value: new {:el, i} into the 5,000-tuple set.
      add =
        rate(m, fn ->
          Enum.each(1..m, &({:ok, _} = ContextStore.add({:set, :tuples}, {:el, set_n + &1})))
        end)

      %{sets: sets, reg_get: reg_get, gets: gets, add: add}
    end

    # Floor 1: a process holding the same MapSet answers each request with
    # it (one copy into the caller's heap, as a GenServer holding the value
    # in its state would). Sending to self is no floor: OTP does not copy
    # a message a process sends to itself.
    defp holder_gets(_holder, 0), do: :ok

    defp holder_gets(holder, k) do
      send(holder, {:get, self()})

      receive do
        {:value, _} -> :ok
      end

      holder_gets(holder, k - 1)
    end

    defp holder_loop(v) do
      receive do
        {:get, from} ->
          send(from, {:value, v})
          holder_loop(v)

        :stop ->
          :ok
      end
    end

    # Floor 2: sent to another process, which sends it back (two copies).
    defp round_trips(_echo, _v, 0), do: :ok

    defp round_trips(echo, v, k) do
      send(echo, {self(), v})

      receive do
        {:echo, _} -> :ok
      end

      round_trips(echo, v, k - 1)
    end

    defp echo_loop do
      receive do
        {from, v} ->
          send(from, {:echo, v})
          echo_loop()

        :stop ->
          :ok
      end
    end

    # --- lowrate ------------------------------------------------------------------
    defp sleep_until(t_us) do
      d = t_us - now()
      if d > 0, do: Process.sleep(div(d + 999, 1000))
    end

    # `rate` increments of `id` per second for `n` increments from t0 (µs).
    def paced_incs(id, rate, n, t0) do
      sleep_until(t0)
      start = now()
      paced(id, rate, n, start, 0)
      {start, now()}
    end

    defp paced(_id, _rate, n, _start, n), do: :ok

    defp paced(id, rate, n, start, done) do
      target = min(n, div((now() - start) * rate, 1_000_000))
      Enum.each(done..(target - 1)//1, fn _ -> {:ok, _} = ContextStore.increment(id, 1) end)
      if target < n, do: Process.sleep(1)
      paced(id, rate, n, start, max(done, target))
    end

    # Probe writer: sets :probe to {k, t_write} every interval_us from t0.
    def start_probes(n, interval_us, t0) do
      pid =
        spawn(fn ->
          writes =
            for k <- 0..(n - 1) do
              sleep_until(t0 + k * interval_us)
              tw = now()
              {:ok, _} = ContextStore.set(:probe, {k, tw})
              {k, tw}
            end

          receive do
            {:collect, from} -> send(from, {:writes, writes})
          end
        end)

      Process.register(pid, :host_app_probe)
      :ok
    end

    def collect_probes do
      send(:host_app_probe, {:collect, self()})

      receive do
        {:writes, w} -> w
      after
        60_000 -> :timeout
      end
    end

    # Subscribed to :probe; on each notification reads it and records {k, t}.
    def start_watch do
      parent = self()

      pid =
        spawn(fn ->
          :ok = ContextStore.subscribe(ContextStore, [:probe], self())
          send(parent, :subscribed)
          watch([])
        end)

      receive do
        :subscribed -> Process.register(pid, :host_app_watch)
      after
        5_000 -> raise "subscribe timed out"
      end

      :ok
    end

    defp watch(reads) do
      receive do
        {:crdt_changed, _, :probe, _} ->
          t = now()

          case ContextStore.get(:probe) do
            {:ok, {k, _}} -> watch([{k, t} | reads])
            _ -> watch(reads)
          end

        {:collect, from} ->
          send(from, {:reads, Enum.reverse(reads)})
      end
    end

    def collect_watch do
      send(:host_app_watch, {:collect, self()})

      receive do
        {:reads, r} -> r
      after
        10_000 -> :timeout
      end
    end

    # --- nodes --------------------------------------------------------------------
    # `n` increments of :burst as fast as possible from t0, then poll until
    # this node reads `total`: {t_first, t_last, t_seen_total}.
    def burst(n, t0, total, deadline_us) do
      sleep_until(t0)
      t1 = now()
      Enum.each(1..n//1, fn _ -> {:ok, _} = ContextStore.increment(:burst, 1) end)
      t2 = now()
      {t1, t2, wait_value(:burst, total, deadline_us)}
    end

    defp wait_value(id, total, deadline) do
      cond do
        ContextStore.get(id) == {:ok, total} -> now()
        now() > deadline -> {:timeout, ContextStore.get(id)}
        true -> Process.sleep(1) && wait_value(id, total, deadline)
      end
    end

    def idle_sample, do: %{t: now(), ticks: cpu_ticks(), bytes: counters().bytes_sent}

    # Start the default store and time until {:h, 1..n} are all here with a
    # value: {start_link µs, µs from start_link returning to all present}.
    def catch_up(n, budget_ms) do
      link_us = start_default()
      t0 = now()
      missing = Enum.to_list(1..n)
      {link_us, wait_all(missing, t0, budget_ms * 1000)}
    end

    defp wait_all(missing, t0, budget) do
      missing =
        Enum.reject(missing, fn i ->
          case ContextStore.get({:h, i}) do
            {:ok, v} when v not in [nil, 0] -> true
            _ -> false
          end
        end)

      cond do
        missing == [] -> now() - t0
        now() - t0 > budget -> {:timeout, length(missing)}
        true -> Process.sleep(10) && wait_all(missing, t0, budget)
      end
    end
  end

# --- runner -------------------------------------------------------------------
:persistent_term.put(:host_app_load, [{node_mod, node_bin} | cluster_modules])

defmodule HostApp do
  @moduledoc false
  alias Vsmcp.Test.Cluster

  @node HostApp.Node

  def now, do: :os.system_time(:microsecond)

  def row(cols),
    do:
      IO.puts("| " <> Enum.map_join(cols, " | ", &String.pad_trailing(to_string(&1), 14)) <> " |")

  def loadavg do
    case File.read("/proc/loadavg") do
      {:ok, s} -> s |> String.split() |> Enum.take(3) |> Enum.join(" ")
      _ -> "?"
    end
  end

  def percentile([], _p), do: nil
  def percentile(s, p), do: Enum.at(s, min(length(s) - 1, trunc(length(s) * p)))
  def ms(nil), do: "-"
  def ms(us) when is_integer(us) or is_float(us), do: "#{Float.round(us / 1000, 2)} ms"
  def ms(other), do: inspect(other)
  def k(r), do: "#{round(r / 1000)} k/s"
  def mib(kb), do: "#{Float.round(kb / 1024, 1)} MiB"

  def cookie, do: :persistent_term.get(:host_app_cookie)

  # `n` nodes, connected, each running Vsmcp.PubSub and the default store;
  # waits until every store sees the n-1 others.
  def start_cluster(n, tmp) do
    nodes = start_nodes(n, tmp, true)
    for nd <- nodes, do: call(nd, :start_default, [])
    wait_peers(nodes)
    nodes
  end

  def start_nodes(n, tmp, connect) do
    Cluster.start(n,
      tmp_dir: tmp,
      cleanup: :manual,
      cookie: cookie(),
      connect: connect,
      load: :persistent_term.get(:host_app_load),
      prefix: "host_app",
      app_env: [{:logger, :level, :warning}] ++ storage_env(),
      pubsub: Vsmcp.PubSub
    )
  end

  # `--storage memory_budget=67108864,ets_limit=20000`: storage options of
  # every node's default store (config :vsmcp, Vsmcp.CRDT.ContextStore).
  defp storage_env do
    case :persistent_term.get(:host_app_storage, []) do
      [] -> []
      opts -> [{:vsmcp, Vsmcp.CRDT.ContextStore, [storage_opts: opts]}]
    end
  end

  def wait_peers(nodes) do
    want = length(nodes) - 1

    {:ok, _, ms} =
      eventually(fn -> Enum.all?(nodes, &(call(&1, :up_peers, []) == want)) end, 60_000)

    ms
  end

  def call(nd, fun, args, timeout \\ 3_600_000), do: Cluster.call(nd, @node, fun, args, timeout)

  def on_all(nodes, fun) do
    nodes |> Enum.map(&Task.async(fn -> fun.(&1) end)) |> Task.await_many(3_600_000)
  end

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

  # --- memory -----------------------------------------------------------------
  # Fresh 2-node cluster; node 1 fills `n` ids of `kind` (or one set of n
  # elements); node 2 receives them by sync. RSS growth per id on both.
  def memory_case(label, kind, n, tmp, settle_ms) do
    [a, b] = nodes = start_cluster(2, tmp)

    try do
      Process.sleep(settle_ms)
      base = Enum.map(nodes, &call(&1, :memory_report, []))

      fill_us =
        if kind == :set_elements,
          do: call(a, :fill_set, [n]),
          else: call(a, :fill, [kind, 1, n])

      _ = call(a, :flush, [])

      {:ok, _, conv_ms} =
        if kind == :set_elements,
          do: eventually(fn -> call(b, :set_size, [:big]) == n end, 1_800_000, 500),
          else:
            eventually(
              fn -> call(b, :present, [n, n]) == 1 and call(b, :present, [1, n]) == n end,
              1_800_000,
              1_000
            )

      Enum.each(nodes, &call(&1, :flush, []))
      Process.sleep(settle_ms)
      rep = Enum.map(nodes, &call(&1, :memory_report, []))

      per =
        for {b0, r} <- Enum.zip(base, rep) do
          round((r.rss_kb - b0.rss_kb) * 1024 / n)
        end

      row([
        label,
        n,
        "#{round(n / (fill_us / 1_000_000))}/s",
        "#{conv_ms} ms",
        Enum.map_join(base, " / ", &mib(&1.rss_kb)),
        Enum.map_join(rep, " / ", &mib(&1.rss_kb)),
        Enum.join(per, " / ")
      ])

      [ra | _] = rep

      IO.puts(
        "    n1 info: hot #{ra.hot} warm #{ra.warm} count #{ra.count}, memory #{inspect(ra.memory)}, " <>
          "disk #{inspect(ra.disk)}, beam #{mib(ra.beam_kb)}, sync log entries #{inspect(ra.log_entries)}; " <>
          "n2 beam #{mib(List.last(rep).beam_kb)} memory #{inspect(List.last(rep).memory)}"
      )

      IO.puts("RESULT memory[#{label} #{n}] #{Enum.join(per, " / ")} B per unit (n1 / n2)")
    after
      Cluster.stop(nodes)
    end
  end
end

alias HostApp, as: H

{opts, rest, invalid} =
  OptionParser.parse(System.argv(),
    strict: [
      only: :keep,
      quick: :boolean,
      mem_sizes: :string,
      type_n: :integer,
      set_elements: :integer,
      start_n: :integer,
      val_n: :integer,
      get_n: :integer,
      low_s: :integer,
      burst: :integer,
      idle_s: :integer,
      catchup: :integer,
      node_counts: :string,
      storage: :string
    ]
  )

if rest != [] or invalid != [], do: raise("unknown arguments: #{inspect(rest ++ invalid)}")

storage =
  for pair <- String.split(Keyword.get(opts, :storage, ""), ",", trim: true) do
    [k, v] = String.split(pair, "=", parts: 2)
    {String.to_atom(k), String.to_integer(v)}
  end

:persistent_term.put(:host_app_storage, storage)
if storage != [], do: IO.puts("storage_opts of every store: #{inspect(storage)}")

all_phases = ~w(memory start values lowrate nodes)
only = opts |> Keyword.get_values(:only) |> Enum.flat_map(&String.split(&1, ","))
phases = if only == [], do: all_phases, else: only

for p <- phases,
    p not in all_phases,
    do: raise("unknown phase #{p}; phases: #{inspect(all_phases)}")

quick = Keyword.get(opts, :quick, false)
ints = fn s -> s |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1) end

cfg = %{
  mem_sizes:
    ints.(
      Keyword.get(opts, :mem_sizes, if(quick, do: "2000,20000", else: "20000,200000,1000000"))
    ),
  type_n: Keyword.get(opts, :type_n, if(quick, do: 20_000, else: 200_000)),
  set_elements: Keyword.get(opts, :set_elements, if(quick, do: 10_000, else: 100_000)),
  start_n: Keyword.get(opts, :start_n, if(quick, do: 20_000, else: 1_000_000)),
  val_n: Keyword.get(opts, :val_n, if(quick, do: 20_000, else: 200_000)),
  get_n: Keyword.get(opts, :get_n, if(quick, do: 200, else: 2_000)),
  low_s: Keyword.get(opts, :low_s, if(quick, do: 5, else: 30)),
  burst: Keyword.get(opts, :burst, 10_000),
  idle_s: Keyword.get(opts, :idle_s, if(quick, do: 5, else: 30)),
  catchup: Keyword.get(opts, :catchup, if(quick, do: 10_000, else: 100_000)),
  node_counts: ints.(Keyword.get(opts, :node_counts, if(quick, do: "2,4", else: "2,4,8"))),
  settle_ms: if(quick, do: 1_000, else: 3_000)
}

:persistent_term.put(
  :host_app_cookie,
  "host_app_" <> Base.url_encode64(:crypto.strong_rand_bytes(9))
)

IO.puts("# vsmcp_crdt host-application benchmark (issue 18)")

IO.puts(
  "OTP #{System.otp_release()}, Elixir #{System.version()}, cores #{System.schedulers_online()}, " <>
    "phases #{Enum.join(phases, ",")}\nsizes: #{inspect(cfg)}\nload average at start: #{H.loadavg()}\n"
)

tmp = Path.join(System.tmp_dir!(), "vsmcp_host_app_#{System.unique_integer([:positive])}")
File.mkdir_p!(tmp)
t_start = System.monotonic_time(:millisecond)

phase = fn name, fun ->
  if name in phases do
    IO.puts("## #{name} (load average #{H.loadavg()})")
    t = System.monotonic_time(:millisecond)
    fun.()

    IO.puts(
      "(#{name}: #{div(System.monotonic_time(:millisecond) - t, 1000)} s, load average #{H.loadavg()})\n"
    )
  end
end

try do
  # --- 1. memory ----------------------------------------------------------------
  phase.("memory", fn ->
    IO.puts(
      "RSS (VmRSS) of each node's OS process after a flush (sync/2), #{cfg.settle_ms} ms settle and a GC of " <>
        "every process; growth = after - before, over the ids (or set elements). n1 wrote, n2 received by sync."
    )

    H.row(["case", "n", "fill rate n1", "n2 has all", "RSS before", "RSS after", "B/unit n1 / n2"])

    for n <- cfg.mem_sizes, do: H.memory_case("g_counter", :g_counter, n, tmp, cfg.settle_ms)

    # `--type-n 0` / `--set-elements 0` leave these cases out.
    for kind <- [:pn_counter, :or_set, :lww_register],
        cfg.type_n > 0,
        do: H.memory_case(to_string(kind), kind, cfg.type_n, tmp, cfg.settle_ms)

    if cfg.set_elements > 0,
      do: H.memory_case("set elements", :set_elements, cfg.set_elements, tmp, cfg.settle_ms)
  end)

  # --- 2. start -------------------------------------------------------------------
  phase.("start", fn ->
    [a, b] = nodes = H.start_cluster(2, tmp)

    try do
      fill_us = H.call(a, :fill, [:g_counter, 1, cfg.start_n])
      _ = H.call(a, :flush, [])

      {:ok, _, conv_ms} =
        H.eventually(
          fn -> H.call(b, :present, [1, cfg.start_n]) == cfg.start_n end,
          1_800_000,
          1_000
        )

      IO.puts(
        "#{cfg.start_n} G-Counter ids filled on n1 in #{div(fill_us, 1000)} ms, on n2 #{conv_ms} ms later; " <>
          "n1 stopped (:peer.stop) and started again as a new OS process, connected to n2, then the supervisor started"
      )

      Vsmcp.Test.Cluster.stop(a)
      a2 = Vsmcp.Test.Cluster.restart(a, connect_to: [b])
      r = H.call(a2, :start_timed, [{:h, div(cfg.start_n, 2)}, 60_000])

      IO.puts(
        "start_link took #{H.ms(r.start_link_us)}; each call polled from its own process every 1 ms"
      )

      H.row(["call", "first answer", "attempts", "target"])

      for {name, {us, attempts}} <-
            Enum.sort_by(r.firsts, fn {_, {us, _}} -> if is_integer(us), do: us, else: 1.0e12 end) do
        H.row([
          name,
          H.ms(us),
          attempts,
          if(name in [:peer_up, :sync_round, :digest_ready], do: "-", else: "<= 100 ms")
        ])
      end

      {n, list_us} = r.list_crdts
      IO.puts("list_crdts (all #{n} ids), called after the above: #{H.ms(list_us)}")

      worst =
        r.firsts
        |> Map.drop([:peer_up, :sync_round, :digest_ready])
        |> Enum.map(fn {_, {us, _}} -> us end)

      IO.puts(
        "RESULT start: slowest call #{H.ms(Enum.max(worst))} after start_link (target <= 100 ms); " <>
          "sync round #{H.ms(elem(r.firsts.sync_round, 0))}; digest ready " <>
          "#{H.ms(elem(r.firsts.digest_ready, 0))}"
      )

      Vsmcp.Test.Cluster.stop([a2, b])
    after
      Vsmcp.Test.Cluster.stop(nodes)
    end
  end)

  # --- 3. values ------------------------------------------------------------------
  phase.("values", fn ->
    [a] = nodes = H.start_cluster(1, tmp)

    try do
      r = H.call(a, :values, [cfg.val_n, cfg.get_n, 5_000])

      IO.puts(
        "one node, sync on (no peer); #{cfg.val_n} sets / register gets, #{cfg.get_n} set gets per case"
      )

      H.row(["operation", "ops/s"])
      for {name, v} <- r.sets, do: H.row(["LWW #{name}", H.k(v)])
      H.row(["register get (4-key map)", H.k(r.reg_get)])

      IO.puts(
        "\nset get of 5,000 elements vs the copy floor: holder = another process holding the same MapSet " <>
          "answers a request with it (one copy, as a GenServer holding it in its state); echo = the caller " <>
          "sends it to another process which sends it back (two copies)"
      )

      H.row(["elements", "get/s", "holder floor/s", "echo floor/s", "get / holder", "get / echo"])

      for {kind, g} <- r.gets do
        H.row([
          kind,
          round(g.get),
          round(g.self_floor),
          round(g.round_floor),
          Float.round(g.get / g.self_floor, 2),
          Float.round(g.get / g.round_floor, 2)
        ])

        IO.puts(
          "RESULT values[get #{kind}] #{Float.round(g.get / g.self_floor, 2)}x the one-copy floor (target >= 0.9)"
        )
      end

      IO.puts(
        "add returning the value (new {:el, i} into the 5,000-tuple set): #{round(r.add)}/s"
      )

      IO.puts("RESULT values[set four-key map] #{H.k(r.sets[:set_four_key_map])}")
    after
      Vsmcp.Test.Cluster.stop(nodes)
    end
  end)

  # --- 4. lowrate -----------------------------------------------------------------
  phase.("lowrate", fn ->
    [a | others] = nodes = H.start_cluster(3, tmp)

    try do
      :ok = Vsmcp.Test.Cluster.call(a, Vsmcp.CRDT.ContextStore, :create, [:c, :g_counter])
      :ok = Vsmcp.Test.Cluster.call(a, Vsmcp.CRDT.ContextStore, :create, [:probe, :lww_register])

      {:ok, _, _} =
        H.eventually(
          fn ->
            Enum.all?(nodes, fn nd ->
              Vsmcp.Test.Cluster.call(nd, Vsmcp.CRDT.ContextStore, :get, [:probe]) == {:ok, nil}
            end)
          end,
          30_000
        )

      Process.sleep(2_000)
      c0 = Enum.map(nodes, &H.call(&1, :counters, []))
      Process.sleep(5_000)
      c1 = Enum.map(nodes, &H.call(&1, :counters, []))
      bg = Enum.sum(Enum.zip_with(c1, c0, &(&1.bytes_sent - &2.bytes_sent))) / 5
      IO.puts("idle background, 3 nodes together: #{Float.round(bg, 1)} B/s sent")

      H.row([
        "rate/node",
        "increments",
        "B sent",
        "B/inc",
        "B/inc net of bg",
        "probe p50",
        "p99",
        "max",
        "reads/missed"
      ])

      for rate <- [100, 2_000] do
        per = rate * cfg.low_s
        probes = cfg.low_s * 20
        for o <- others, do: :ok = H.call(o, :start_watch, [])
        before = Enum.map(nodes, &H.call(&1, :counters, []))
        w0 = System.monotonic_time(:millisecond)
        t0 = H.now() + 300_000
        :ok = H.call(a, :start_probes, [probes, 50_000, t0 + 25_000])
        H.on_all(nodes, &H.call(&1, :paced_incs, [:c, rate, per, t0]))
        total = 3 * per
        prev = if rate == 100, do: total, else: 3 * 100 * cfg.low_s + total

        {:ok, _, _} =
          H.eventually(
            fn ->
              Enum.all?(
                nodes,
                &(Vsmcp.Test.Cluster.call(&1, Vsmcp.CRDT.ContextStore, :get, [:c]) == {:ok, prev})
              )
            end,
            30_000,
            5
          )

        Process.sleep(500)
        after_ = Enum.map(nodes, &H.call(&1, :counters, []))
        window = (System.monotonic_time(:millisecond) - w0) / 1000
        bytes = Enum.sum(Enum.zip_with(after_, before, &(&1.bytes_sent - &2.bytes_sent)))
        writes = H.call(a, :collect_probes, []) |> Map.new()

        reads =
          Enum.flat_map(others, fn o ->
            o |> H.call(:collect_watch, []) |> Enum.uniq_by(&elem(&1, 0))
          end)

        lats = for {k, t} <- reads, Map.has_key?(writes, k), do: t - Map.fetch!(writes, k)

        lats = Enum.sort(lats)
        missed = 2 * map_size(writes) - length(lats)

        H.row([
          rate,
          total,
          bytes,
          Float.round(bytes / total, 1),
          Float.round((bytes - bg * window) / total, 1),
          H.ms(H.percentile(lats, 0.5)),
          H.ms(H.percentile(lats, 0.99)),
          H.ms(List.last(lats)),
          "#{length(lats)}/#{missed}"
        ])

        IO.puts(
          "RESULT lowrate[#{rate}/s per node] #{Float.round(bytes / total, 1)} B/increment (target < 100 B at 100/s), " <>
            "probe p99 #{H.ms(H.percentile(lats, 0.99))} (target <= 20 ms)"
        )
      end
    after
      Vsmcp.Test.Cluster.stop(nodes)
    end
  end)

  # --- 5. nodes -------------------------------------------------------------------
  phase.("nodes", fn ->
    H.row([
      "nodes",
      "burst conv",
      "idle B/s/node",
      "max B/s",
      "CPU %/node",
      "max CPU %",
      "RSS/node",
      "catch-up"
    ])

    for count <- cfg.node_counts do
      nodes = H.start_cluster(count, tmp)
      [a | _] = nodes

      try do
        :ok = Vsmcp.Test.Cluster.call(a, Vsmcp.CRDT.ContextStore, :create, [:burst, :g_counter])

        {:ok, _, _} =
          H.eventually(
            fn ->
              Enum.all?(
                nodes,
                &(Vsmcp.Test.Cluster.call(&1, Vsmcp.CRDT.ContextStore, :get, [:burst]) == {:ok, 0})
              )
            end,
            30_000
          )

        per = div(cfg.burst, count)
        total = per * count
        t0 = H.now() + 300_000
        res = H.on_all(nodes, &H.call(&1, :burst, [per, t0, total, t0 + 120_000_000]))
        last = res |> Enum.map(&elem(&1, 1)) |> Enum.max()
        dones = Enum.map(res, &elem(&1, 2))

        conv =
          if Enum.all?(dones, &is_integer/1), do: Enum.max(dones) - last, else: {:timeout, dones}

        Process.sleep(3_000)
        s0 = Enum.map(nodes, &H.call(&1, :idle_sample, []))
        Process.sleep(cfg.idle_s * 1000)
        s1 = Enum.map(nodes, &H.call(&1, :idle_sample, []))

        {bps, cpu} =
          Enum.zip(s1, s0)
          |> Enum.map(fn {x, y} ->
            s = (x.t - y.t) / 1_000_000
            {(x.bytes - y.bytes) / s, (x.ticks - y.ticks) / 100 / s * 100}
          end)
          |> Enum.unzip()

        rss = Enum.map(nodes, &H.call(&1, :memory_report, []).rss_kb)

        # Catch-up: n1 fills catchup ids; all hold them; a new node joins.
        _ = H.call(a, :fill, [:g_counter, 1, cfg.catchup])
        _ = H.call(a, :flush, [])

        {:ok, _, _} =
          H.eventually(
            fn -> Enum.all?(nodes, &(H.call(&1, :present, [1, cfg.catchup]) == cfg.catchup)) end,
            1_800_000,
            1_000
          )

        [new] = H.start_nodes(1, tmp, false)
        nodes = nodes ++ [new]
        for nd <- Enum.drop(nodes, -1), do: Vsmcp.Test.Cluster.connect(new, nd)
        {link_us, catch_us} = H.call(new, :catch_up, [cfg.catchup, 1_800_000])
        Vsmcp.Test.Cluster.stop(nodes)

        mean = fn l -> Enum.sum(l) / length(l) end

        H.row([
          count,
          H.ms(conv),
          round(mean.(bps)),
          round(Enum.max(bps)),
          Float.round(mean.(cpu), 2),
          Float.round(Enum.max(cpu), 2),
          H.mib(mean.(rss)),
          "#{H.ms(catch_us)} (start_link #{H.ms(link_us)})"
        ])

        IO.puts(
          "RESULT nodes[#{count}] burst of #{total} converged #{H.ms(conv)} after the last write; idle " <>
            "#{round(mean.(bps))} B/s and #{Float.round(mean.(cpu), 2)}% CPU per node; RSS #{Enum.map_join(rss, "/", &H.mib/1)}; " <>
            "new node holds #{cfg.catchup} ids #{H.ms(catch_us)} after start_link"
        )
      after
        Vsmcp.Test.Cluster.stop(nodes)
      end
    end
  end)
after
  File.rm_rf!(tmp)
end

IO.puts(
  "total: #{div(System.monotonic_time(:millisecond) - t_start, 1000)} s, load average #{H.loadavg()}"
)
