defmodule Vsmcp.CRDT.Types.LWWRegister do
  @moduledoc """
  Last-writer-wins register. Writes are ordered by `(hybrid logical clock,
  writer's node id, value)`, a total order, so concurrent writes resolve to
  the same value on every replica whatever the delivery order (Shapiro et
  al. 2011, §3.2.1, with `Vsmcp.CRDT.HLC` time instead of wall time). A
  write always supersedes what its replica has seen: its timestamp is
  `max(now, current + 1)`. Node ids are compared by canonical bytes, as in
  `Vsmcp.CRDT.HLC.compare/2`.

  The value may be any term, `nil` included; a new register reads `nil`.
  The delta of `set/2` is the new entry.

  A value is `%LWWRegister{node_id: term, state: binary}` as described in
  `Vsmcp.CRDT.Behaviour`; each call costs O(size of the value). Errors
  follow `Vsmcp.CRDT.Behaviour` (`get/1` and `value/1` raise on an invalid
  register, because a register may legitimately hold `{:error, x}`).

  Invariant: the merge keeps the greater of two writes in that total order,
  so it is commutative, associative and idempotent.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {a, _} = LWWRegister.set(LWWRegister.new(:node1), :first)
      iex> {b, delta_b} = LWWRegister.set(LWWRegister.merge(LWWRegister.new(:node2), a), :second)
      iex> {LWWRegister.value(LWWRegister.merge(a, delta_b)), LWWRegister.value(b)}
      {:second, :second}
  """

  @behaviour Vsmcp.CRDT.Behaviour

  alias Vsmcp.CRDT.Behaviour
  alias Vsmcp.CRDT.Types.EncodedState

  @enforce_keys [:node_id, :state]
  defstruct [:node_id, :state]

  @type t :: %__MODULE__{node_id: term(), state: binary()}
  @type op :: {:set, term()}

  @kinds [:lww_register]

  @doc """
  An empty register (value `nil`) held by replica `node_id`.

      iex> Vsmcp.CRDT.Types.LWWRegister.new(:node1) |> Vsmcp.CRDT.Types.LWWRegister.value()
      nil
  """
  @impl Behaviour
  @spec new(term()) :: t
  def new(node_id), do: EncodedState.new(__MODULE__, :lww_register, node_id)

  @doc """
  Writes `value`; returns `{register, delta}`.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {reg, delta} = LWWRegister.set(LWWRegister.new(:node1), %{mode: :safe})
      iex> {LWWRegister.get(reg), LWWRegister.get(delta)}
      {%{mode: :safe}, %{mode: :safe}}
  """
  @spec set(t, term()) :: {t, t} | {:error, Behaviour.reason()}
  def set(register, value), do: mutate(register, {:set, value})

  @doc """
  Applies `{:set, value}`.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {reg, _} = LWWRegister.mutate(LWWRegister.new(:node1), {:set, 42})
      iex> LWWRegister.value(reg)
      42
  """
  @impl Behaviour
  @spec mutate(t, op) :: {t, t} | {:error, Behaviour.reason()}
  def mutate(register, op), do: EncodedState.mutate(register, __MODULE__, @kinds, op)

  @doc """
  Joins a register state or delta into `register`, keeping `register`'s node id.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {_other, delta} = LWWRegister.set(LWWRegister.new(:node2), "v")
      iex> LWWRegister.new(:node1) |> LWWRegister.merge(delta) |> LWWRegister.value()
      "v"
  """
  @impl Behaviour
  @spec merge(t, t) :: t | {:error, Behaviour.reason()}
  def merge(register, other), do: EncodedState.merge(register, other, __MODULE__, @kinds)

  @doc """
  The current value (`nil` if never written). Same as `value/1`.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {reg, _} = LWWRegister.set(LWWRegister.new(:node1), {:error, :kept})
      iex> LWWRegister.get(reg)
      {:error, :kept}
  """
  @spec get(t) :: term()
  def get(register), do: EncodedState.value(register, __MODULE__, @kinds)

  @doc """
  The current value (`nil` if never written).

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {reg, _} = LWWRegister.set(LWWRegister.new(:node1), 1)
      iex> {reg, _} = LWWRegister.set(reg, 2)
      iex> LWWRegister.value(reg)
      2
  """
  @impl Behaviour
  @spec value(t) :: term()
  def value(register), do: EncodedState.value(register, __MODULE__, @kinds)

  @doc """
  Whether both registers hold the same winning write.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> {a, delta} = LWWRegister.set(LWWRegister.new(:node1), :x)
      iex> LWWRegister.equal?(a, LWWRegister.merge(LWWRegister.new(:node2), delta))
      true
  """
  @impl Behaviour
  @spec equal?(t, t) :: boolean()
  def equal?(a, b), do: EncodedState.equal?(a, b, __MODULE__, @kinds)

  @doc """
  The winning write's clock: `%{timestamp: ms, counter: c, node_id: writer}`,
  or `%{}` for a register never written.

      iex> alias Vsmcp.CRDT.Types.LWWRegister
      iex> LWWRegister.causal_context(LWWRegister.new(:node1))
      %{}
      iex> {reg, _} = LWWRegister.set(LWWRegister.new(:node1), :x)
      iex> match?(%{node_id: :node1, counter: _, timestamp: _}, LWWRegister.causal_context(reg))
      true
  """
  @impl Behaviour
  @spec causal_context(t) :: map()
  def causal_context(register), do: EncodedState.causal_context(register, __MODULE__, @kinds)
end
