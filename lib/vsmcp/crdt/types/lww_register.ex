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
  """

  @behaviour Vsmcp.CRDT.Behaviour

  alias Vsmcp.CRDT.Behaviour
  alias Vsmcp.CRDT.Types.EncodedState

  @enforce_keys [:node_id, :state]
  defstruct [:node_id, :state]

  @type t :: %__MODULE__{node_id: term(), state: binary()}
  @type op :: {:set, term()}

  @kinds [:lww_register]

  @doc "An empty register (value `nil`) held by replica `node_id`."
  @impl Behaviour
  @spec new(term()) :: t
  def new(node_id), do: EncodedState.new(__MODULE__, :lww_register, node_id)

  @doc "Writes `value`; returns `{register, delta}`."
  @spec set(t, term()) :: {t, t} | {:error, Behaviour.reason()}
  def set(register, value), do: mutate(register, {:set, value})

  @doc "Applies `{:set, value}`."
  @impl Behaviour
  @spec mutate(t, op) :: {t, t} | {:error, Behaviour.reason()}
  def mutate(register, op), do: EncodedState.mutate(register, __MODULE__, @kinds, op)

  @doc "Joins a register state or delta into `register`, keeping `register`'s node id."
  @impl Behaviour
  @spec merge(t, t) :: t | {:error, Behaviour.reason()}
  def merge(register, other), do: EncodedState.merge(register, other, __MODULE__, @kinds)

  @doc "The current value (`nil` if never written). Same as `value/1`."
  @spec get(t) :: term()
  def get(register), do: EncodedState.value(register, __MODULE__, @kinds)

  @doc "The current value (`nil` if never written)."
  @impl Behaviour
  @spec value(t) :: term()
  def value(register), do: EncodedState.value(register, __MODULE__, @kinds)

  @doc "Whether both registers hold the same winning write."
  @impl Behaviour
  @spec equal?(t, t) :: boolean()
  def equal?(a, b), do: EncodedState.equal?(a, b, __MODULE__, @kinds)

  @doc """
  The winning write's clock: `%{timestamp: ms, counter: c, node_id: writer}`,
  or `%{}` for a register never written.
  """
  @impl Behaviour
  @spec causal_context(t) :: map()
  def causal_context(register), do: EncodedState.causal_context(register, __MODULE__, @kinds)
end
