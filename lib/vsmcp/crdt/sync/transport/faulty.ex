defmodule Vsmcp.CRDT.Sync.Transport.Faulty do
  @moduledoc """
  A `Vsmcp.CRDT.Sync.Transport` that wraps another one and makes the network
  worse on purpose: **for tests and chaos runs only**, never production.

      transport: Vsmcp.CRDT.Sync.Transport.Faulty,
      transport_opts: [
        inner: {Vsmcp.CRDT.Sync.Transport.PG, []},
        drop: 0.1, duplicate: 0.1, reorder: 0.1, max_delay_ms: 20, seed: 42
      ]

  Each outgoing `broadcast/3` or `send_to/4` (one *message*) is, with
  independent draws:

    1. dropped with probability `drop` (for every recipient at once);
    2. otherwise sent twice with probability `duplicate`;
    3. each copy delayed with probability `reorder` by 0..`max_delay_ms` ms,
       from a spawned process, so later messages can overtake it. A delayed
       broadcast still skips the original caller (it goes through the inner
       transport's `broadcast_from/4`, required when `reorder > 0`).

  `join/3` and `leave/3` pass through unchanged. All options but `inner:`
  default to 0 (`max_delay_ms` to 20). The draws for the n-th message sent
  through one state are a function of `{seed, n}` alone, so a run with a
  given `seed:` faults the same messages as long as the messages are sent
  in the same order. `stats/1` counts what was done.

  Cost: the draws for one message (a function of `{seed, n}`) plus the inner transport's
  cost per copy; a spawned process per delayed copy. Invariant: it only
  drops, duplicates and reorders (never alters a payload), which the
  at-most-once contract of `Vsmcp.CRDT.Sync.Transport` already allows.
  """

  @behaviour Vsmcp.CRDT.Sync.Transport

  # Counter indexes in the :counters array of a state.
  @messages 1
  @dropped 2
  @duplicated 3
  @delayed 4
  @delivered 5

  @doc """
  Starts the inner transport (`inner: {module, opts}`) and validates the
  fault options. Errors: the inner transport's own, or
  `{:invalid_option, name, value}`, or `{:inner_lacks_broadcast_from, module}`
  when `reorder > 0` and the inner transport cannot delay a broadcast.

      iex> alias Vsmcp.CRDT.Sync.Transport.{Faulty, PG}
      iex> {:ok, %{inner: {PG, %{scope: scope}}, drop: 0.1}} = Faulty.start(inner: {PG, []}, drop: 0.1)
      iex> scope
      Vsmcp.CRDT.Sync.PG
      iex> Faulty.start(inner: {PG, []}, drop: 2)
      {:error, {:invalid_option, :drop, 2}}
      iex> Faulty.start(drop: 0.1)
      {:error, {:invalid_option, :inner, nil}}
  """
  @impl true
  @spec start(keyword()) :: {:ok, map()} | {:error, term()}
  def start(opts) when is_list(opts) do
    with {:ok, {module, inner_opts}} <- fetch_inner(opts),
         {:ok, drop} <- probability(opts, :drop),
         {:ok, duplicate} <- probability(opts, :duplicate),
         {:ok, reorder} <- probability(opts, :reorder),
         {:ok, max_delay_ms} <- max_delay(opts),
         {:ok, seed} <- seed(opts),
         :ok <- can_delay(module, reorder),
         {:ok, inner_state} <- module.start(inner_opts) do
      {:ok,
       %{
         inner: {module, inner_state},
         drop: drop,
         duplicate: duplicate,
         reorder: reorder,
         max_delay_ms: max_delay_ms,
         seed: seed,
         sequence: :atomics.new(1, signed: false),
         counters: :counters.new(5, [:write_concurrency])
       }}
    end
  end

  @doc """
  What this state did so far: `messages` sent through it, `dropped`,
  `duplicated` and `delayed` (copies) among them, and `delivered`, the
  calls made to the inner transport (delayed copies count once they went
  out), so `delivered == messages - dropped + duplicated` once all delays
  have passed.

  Every message dropped, then every message sent twice (no delays, so
  the counts are final when `broadcast/3` returns):

      iex> alias Vsmcp.CRDT.Sync.Transport.{Faulty, PG}
      iex> {:ok, lossy} = Faulty.start(inner: {PG, []}, drop: 1.0)
      iex> for _ <- 1..3, do: :ok = Faulty.broadcast(lossy, "doc:Faulty.stats", "hello")
      iex> Faulty.stats(lossy)
      %{messages: 3, dropped: 3, duplicated: 0, delayed: 0, delivered: 0}
      iex> {:ok, echo} = Faulty.start(inner: {PG, []}, duplicate: 1.0)
      iex> :ok = Faulty.broadcast(echo, "doc:Faulty.stats", "hello")
      iex> Faulty.stats(echo)
      %{messages: 1, dropped: 0, duplicated: 1, delayed: 0, delivered: 2}
  """
  @spec stats(map()) :: %{
          messages: non_neg_integer(),
          dropped: non_neg_integer(),
          duplicated: non_neg_integer(),
          delayed: non_neg_integer(),
          delivered: non_neg_integer()
        }
  def stats(%{counters: counters}) do
    %{
      messages: :counters.get(counters, @messages),
      dropped: :counters.get(counters, @dropped),
      duplicated: :counters.get(counters, @duplicated),
      delayed: :counters.get(counters, @delayed),
      delivered: :counters.get(counters, @delivered)
    }
  end

  @impl true
  def join(%{inner: {module, inner}}, topic, key), do: module.join(inner, topic, key)

  @impl true
  def leave(%{inner: {module, inner}}, topic, key), do: module.leave(inner, topic, key)

  @impl true
  def broadcast(%{inner: {module, inner}} = state, topic, payload) do
    caller = self()

    fault(state, fn
      :now -> module.broadcast(inner, topic, payload)
      :later -> module.broadcast_from(inner, caller, topic, payload)
    end)
  end

  @impl true
  def broadcast_from(%{inner: {module, inner}} = state, from, topic, payload) do
    fault(state, fn _when -> module.broadcast_from(inner, from, topic, payload) end)
  end

  @impl true
  def send_to(%{inner: {module, inner}} = state, topic, key, payload) do
    fault(state, fn _when -> module.send_to(inner, topic, key, payload) end)
  end

  # `deliver.(:now)` runs in the caller; `deliver.(:later)` in a spawned
  # process, where a broadcast must name the caller to skip it.
  defp fault(state, deliver) do
    %{counters: counters} = state
    :counters.add(counters, @messages, 1)
    n = :atomics.add_get(state.sequence, 1, 1)
    rand = :rand.seed_s(:exsss, {state.seed, n, 0x5EED})
    {drop_draw, rand} = :rand.uniform_s(rand)

    if drop_draw < state.drop do
      :counters.add(counters, @dropped, 1)
    else
      {duplicate_draw, rand} = :rand.uniform_s(rand)
      copies = if duplicate_draw < state.duplicate, do: 2, else: 1
      if copies == 2, do: :counters.add(counters, @duplicated, 1)

      Enum.reduce(1..copies, rand, fn _copy, rand ->
        {reorder_draw, rand} = :rand.uniform_s(rand)
        # uniform_s/2 draws from 1..n: shifted to 0..max_delay_ms below.
        {delay, rand} = :rand.uniform_s(state.max_delay_ms + 1, rand)

        if reorder_draw < state.reorder do
          :counters.add(counters, @delayed, 1)

          spawn(fn ->
            # The delay is the fault being injected, not a wait for an event.
            Process.sleep(delay - 1)
            deliver.(:later)
            :counters.add(counters, @delivered, 1)
          end)
        else
          deliver.(:now)
          :counters.add(counters, @delivered, 1)
        end

        rand
      end)
    end

    :ok
  end

  defp fetch_inner(opts) do
    case Keyword.fetch(opts, :inner) do
      {:ok, {module, inner_opts}} when is_atom(module) and is_list(inner_opts) ->
        if Code.ensure_loaded?(module) and function_exported?(module, :start, 1),
          do: {:ok, {module, inner_opts}},
          else: {:error, {:invalid_option, :inner, {module, inner_opts}}}

      {:ok, other} ->
        {:error, {:invalid_option, :inner, other}}

      :error ->
        {:error, {:invalid_option, :inner, nil}}
    end
  end

  defp probability(opts, name) do
    case Keyword.get(opts, name, 0) do
      p when is_number(p) and p >= 0 and p <= 1 -> {:ok, p}
      other -> {:error, {:invalid_option, name, other}}
    end
  end

  defp max_delay(opts) do
    case Keyword.get(opts, :max_delay_ms, 20) do
      ms when is_integer(ms) and ms >= 0 -> {:ok, ms}
      other -> {:error, {:invalid_option, :max_delay_ms, other}}
    end
  end

  defp seed(opts) do
    case Keyword.get_lazy(opts, :seed, fn -> :rand.uniform(4_294_967_296) end) do
      seed when is_integer(seed) -> {:ok, seed}
      other -> {:error, {:invalid_option, :seed, other}}
    end
  end

  defp can_delay(module, reorder) do
    if reorder == 0 or function_exported?(module, :broadcast_from, 4),
      do: :ok,
      else: {:error, {:inner_lacks_broadcast_from, module}}
  end
end
