defmodule Vsmcp.CRDT.Types.PNCounter do
  @moduledoc """
  Positive-negative counter: a pair of grow-only counters `P` and `N`, value
  `P - N` (Shapiro et al. 2011, §3.1.2). The delta of an increment or a
  decrement is the one changed entry of `P` or `N`.

  A value is `%PNCounter{node_id: term, state: binary}` as described in
  `Vsmcp.CRDT.Behaviour` (immutable, ETS-storable, sendable). Each call is
  one NIF call costing O(number of replicas).

  `mutate/2` follows the same rule as `Vsmcp.CRDT.ContextStore` (one
  parser in Rust serves both): `{:increment, n}` with a negative `n`
  decrements by `-n`, `{:decrement, n}` with a negative `n` increments, and
  `n == 0` returns the counter unchanged with an empty delta. An amount
  outside `-(2^63)..2^64-1`, or one that would overflow a 64-bit entry, is
  `{:error, {:invalid_amount, n}}`. `increment/2` and `decrement/2` demand a
  positive amount. Errors follow `Vsmcp.CRDT.Behaviour`.

  Invariant: `P` and `N` each only grow, so the join is their pointwise
  maximum and every replica that has seen the same increments and
  decrements reads the same value.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {a, delta_a} = PNCounter.increment(PNCounter.new(:node1), 5)
      iex> {b, delta_b} = PNCounter.decrement(PNCounter.new(:node2), 2)
      iex> {PNCounter.value(PNCounter.merge(a, delta_b)), PNCounter.value(PNCounter.merge(b, delta_a))}
      {3, 3}
  """

  @behaviour Vsmcp.CRDT.Behaviour

  alias Vsmcp.CRDT.Behaviour
  alias Vsmcp.CRDT.Types.EncodedState

  @enforce_keys [:node_id, :state]
  defstruct [:node_id, :state]

  @type t :: %__MODULE__{node_id: term(), state: binary()}
  @type op :: {:increment, integer()} | {:decrement, integer()}

  @kinds [:pn_counter]

  @doc """
  An empty counter held by replica `node_id`.

      iex> Vsmcp.CRDT.Types.PNCounter.new(:node1) |> Vsmcp.CRDT.Types.PNCounter.value()
      0
  """
  @impl Behaviour
  @spec new(term()) :: t
  def new(node_id), do: EncodedState.new(__MODULE__, :pn_counter, node_id)

  @doc """
  Adds `amount` (a positive integer, default 1); raises `ArgumentError` otherwise.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {counter, _delta} = PNCounter.increment(PNCounter.new(:node1), 4)
      iex> PNCounter.value(counter)
      4
  """
  @spec increment(t, pos_integer()) :: {t, t} | {:error, Behaviour.reason()}
  def increment(counter, amount \\ 1), do: positive(counter, :increment, amount)

  @doc """
  Subtracts `amount` (a positive integer, default 1); raises `ArgumentError` otherwise.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {counter, _delta} = PNCounter.decrement(PNCounter.new(:node1))
      iex> PNCounter.value(counter)
      -1
  """
  @spec decrement(t, pos_integer()) :: {t, t} | {:error, Behaviour.reason()}
  def decrement(counter, amount \\ 1), do: positive(counter, :decrement, amount)

  defp positive(counter, tag, amount) when is_integer(amount) and amount > 0,
    do: EncodedState.mutate(counter, __MODULE__, @kinds, {tag, amount})

  defp positive(_counter, tag, amount) do
    raise ArgumentError,
          "#{inspect(__MODULE__)}.#{tag}/2: amount must be a positive integer, got: " <>
            inspect(amount)
  end

  @doc """
  Applies `{:increment, n}` or `{:decrement, n}`; a negative `n` counts the
  other way, and `n == 0` returns the counter unchanged with an empty delta.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {counter, _delta} = PNCounter.mutate(PNCounter.new(:node1), {:increment, -3})
      iex> PNCounter.value(counter)
      -3
  """
  @impl Behaviour
  @spec mutate(t, op) :: {t, t} | {:error, Behaviour.reason()}
  def mutate(counter, {tag, 0}) when tag in [:increment, :decrement],
    do: EncodedState.unchanged(counter, __MODULE__, @kinds, {tag, 0})

  def mutate(counter, op), do: EncodedState.mutate(counter, __MODULE__, @kinds, op)

  @doc """
  Joins a counter state or delta into `counter`, keeping `counter`'s node id.
  Idempotent: merging the same delta twice counts it once.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {_b, delta} = PNCounter.increment(PNCounter.new(:node2), 2)
      iex> a = PNCounter.new(:node1) |> PNCounter.merge(delta) |> PNCounter.merge(delta)
      iex> PNCounter.value(a)
      2
  """
  @impl Behaviour
  @spec merge(t, t) :: t | {:error, Behaviour.reason()}
  def merge(counter, other), do: EncodedState.merge(counter, other, __MODULE__, @kinds)

  @doc """
  Increments minus decrements.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {c, _} = PNCounter.increment(PNCounter.new(:node1), 10)
      iex> {c, _} = PNCounter.decrement(c, 4)
      iex> PNCounter.value(c)
      6
  """
  @impl Behaviour
  @spec value(t) :: integer()
  def value(counter), do: EncodedState.value(counter, __MODULE__, @kinds)

  @doc """
  Whether both counters hold the same entries (node ids of the holders do not matter).

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> PNCounter.equal?(PNCounter.new(:node1), PNCounter.new(:node2))
      true
  """
  @impl Behaviour
  @spec equal?(t, t) :: boolean()
  def equal?(a, b), do: EncodedState.equal?(a, b, __MODULE__, @kinds)

  @doc """
  `%{node_id => p + n}`: per replica, its increments plus its decrements.
  Both only grow, so the sum is that replica's version number.

      iex> alias Vsmcp.CRDT.Types.PNCounter
      iex> {c, _} = PNCounter.increment(PNCounter.new(:node1), 3)
      iex> {c, _} = PNCounter.decrement(c, 2)
      iex> PNCounter.causal_context(c)
      %{node1: 5}
  """
  @impl Behaviour
  @spec causal_context(t) :: %{optional(term()) => pos_integer()}
  def causal_context(counter), do: EncodedState.causal_context(counter, __MODULE__, @kinds)
end
