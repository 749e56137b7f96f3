defmodule Vsmcp.CRDT.Types.GCounter do
  @moduledoc """
  Grow-only counter: one monotone entry per replica; the value is their sum
  and merge is the pointwise maximum (Shapiro et al. 2011, §3.1.1). The
  delta of an increment is the one changed entry.

  A value is `%GCounter{node_id: term, state: binary}` as described in
  `Vsmcp.CRDT.Behaviour` (immutable, ETS-storable, sendable); `state` is
  the core's versioned wire encoding. Each call is one NIF call costing
  O(number of replicas).

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {a, delta_a} = GCounter.increment(GCounter.new(:node1), 5)
      iex> {b, delta_b} = GCounter.increment(GCounter.new(:node2), 3)
      iex> {GCounter.value(GCounter.merge(a, delta_b)), GCounter.value(GCounter.merge(b, delta_a))}
      {8, 8}

  Errors follow `Vsmcp.CRDT.Behaviour`: mutators and `merge/2` return
  `{:error, reason}` for an invalid counter, queries raise `ArgumentError`.
  An amount that would take an entry past 2^64 - 1 is
  `{:error, {:invalid_amount, n}}`.
  """

  @behaviour Vsmcp.CRDT.Behaviour

  alias Vsmcp.CRDT.Behaviour
  alias Vsmcp.CRDT.Types.EncodedState

  @enforce_keys [:node_id, :state]
  defstruct [:node_id, :state]

  @type t :: %__MODULE__{node_id: term(), state: binary()}
  @type op :: {:increment, integer()}

  @kinds [:g_counter]

  @doc """
  An empty counter held by replica `node_id`.

      iex> Vsmcp.CRDT.Types.GCounter.new(:node1) |> Vsmcp.CRDT.Types.GCounter.value()
      0
  """
  @impl Behaviour
  @spec new(term()) :: t
  def new(node_id), do: EncodedState.new(__MODULE__, :g_counter, node_id)

  @doc """
  Adds `amount` (a positive integer, default 1) to this replica's entry.
  Raises `ArgumentError` for any other amount; use `mutate/2` to treat a
  non-positive amount as "no change".

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {counter, _delta} = GCounter.increment(GCounter.new(:node1))
      iex> {counter, _delta} = GCounter.increment(counter, 4)
      iex> GCounter.value(counter)
      5
  """
  @spec increment(t, pos_integer()) :: {t, t} | {:error, Behaviour.reason()}
  def increment(counter, amount \\ 1)

  def increment(counter, amount) when is_integer(amount) and amount > 0,
    do: EncodedState.mutate(counter, __MODULE__, @kinds, {:increment, amount})

  def increment(_counter, amount) do
    raise ArgumentError,
          "#{inspect(__MODULE__)}.increment/2: amount must be a positive integer, got: " <>
            inspect(amount)
  end

  @doc """
  Applies `{:increment, n}`. With `n <= 0` the counter is returned unchanged
  with an empty delta (value 0; merging it changes nothing).

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {counter, _} = GCounter.mutate(GCounter.new(:node1), {:increment, 2})
      iex> {same, delta} = GCounter.mutate(counter, {:increment, -1})
      iex> {same == counter, GCounter.value(delta)}
      {true, 0}
  """
  @impl Behaviour
  @spec mutate(t, op) :: {t, t} | {:error, Behaviour.reason()}
  def mutate(counter, {:increment, n}) when is_integer(n) and n <= 0,
    do: EncodedState.unchanged(counter, __MODULE__, @kinds, {:increment, 0})

  def mutate(counter, op), do: EncodedState.mutate(counter, __MODULE__, @kinds, op)

  @doc """
  Joins a counter state or delta into `counter`, keeping `counter`'s node id.
  Idempotent: merging the same delta twice counts it once.

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {_b, delta} = GCounter.increment(GCounter.new(:node2), 3)
      iex> GCounter.new(:node1) |> GCounter.merge(delta) |> GCounter.merge(delta) |> GCounter.value()
      3
  """
  @impl Behaviour
  @spec merge(t, t) :: t | {:error, Behaviour.reason()}
  def merge(counter, other), do: EncodedState.merge(counter, other, __MODULE__, @kinds)

  @doc """
  The sum of all entries.

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {a, _} = GCounter.increment(GCounter.new(:node1), 2)
      iex> {_b, delta} = GCounter.increment(GCounter.new(:node2), 5)
      iex> GCounter.value(GCounter.merge(a, delta))
      7
  """
  @impl Behaviour
  @spec value(t) :: non_neg_integer()
  def value(counter), do: EncodedState.value(counter, __MODULE__, @kinds)

  @doc """
  Whether both counters hold the same entries (node ids of the holders do not matter).

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {a, delta} = GCounter.increment(GCounter.new(:node1), 2)
      iex> GCounter.equal?(a, GCounter.merge(GCounter.new(:node2), delta))
      true
  """
  @impl Behaviour
  @spec equal?(t, t) :: boolean()
  def equal?(a, b), do: EncodedState.equal?(a, b, __MODULE__, @kinds)

  @doc """
  `%{node_id => entry}`: each replica's count, its version number.

      iex> alias Vsmcp.CRDT.Types.GCounter
      iex> {counter, _} = GCounter.increment(GCounter.new(:node1), 3)
      iex> GCounter.causal_context(counter)
      %{node1: 3}
  """
  @impl Behaviour
  @spec causal_context(t) :: %{optional(term()) => pos_integer()}
  def causal_context(counter), do: EncodedState.causal_context(counter, __MODULE__, @kinds)
end
