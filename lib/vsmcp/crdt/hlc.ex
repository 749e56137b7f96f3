defmodule Vsmcp.CRDT.HLC do
  @moduledoc """
  Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks
  and Consistent Snapshots in Globally Distributed Databases", 2014): wall
  time in milliseconds, a logical counter and the node that issued it.

  * `tick/1` (local or send event): `max(physical time, last)`, the counter
    bumped when the wall time did not advance, so each tick is strictly
    greater than the last.
  * `receive_event/2,3`: the paper's receive rule; the result is strictly
    greater than both the local and the remote clock and keeps the local
    node id. A remote clock more than `max_offset` ms ahead of local
    physical time is rejected with `{:error, {:clock_skew, ahead_ms}}`
    instead of being adopted, so one bad clock cannot drag the cluster into
    the future. The default bound is 500 ms, configurable with
    `config :vsmcp_crdt, hlc_max_offset_ms: ms` or per call.
  * The counter never wraps: when it is exhausted the wall time advances by
    one millisecond.
  * `compare/2` orders by `(timestamp, counter, node id)`, node ids by their
    canonical byte encoding: the order `Vsmcp.CRDT.Types.LWWRegister` uses
    to break ties, a total order on clocks.

  The rules live in Rust (`vsmcp_crdt_core::hlc`); each function is one
  cheap NIF call. Physical time is `System.os_time(:millisecond)`.

  ## String form

  `to_string/1` gives `"<timestamp>:<counter>@<node>"` where `<node>` is a
  tagged encoding of the node id:

  | node id       | encoding                                        | example         |
  |---------------|-------------------------------------------------|-----------------|
  | atom          | `a:` + the atom's name                          | `a:node1@host`  |
  | binary        | `s:` + percent-encoding (RFC 3986 unreserved)   | `s:node%20one`  |
  | integer       | `i:` + decimal                                  | `i:-42`         |
  | any other term| `t:` + URL-safe base64 (no padding) of `term_to_binary` | `t:g2gCYQFhAg` |

  Only the first `@` separates the clock from the node, so atom names may
  contain `@` and `:`. `from_string/1` never evaluates code and never
  creates an atom: an atom must already exist (`String.to_existing_atom/1`),
  `t:` terms are decoded with `binary_to_term(_, [:safe])` and refused if
  they contain a fun. Anything else is `{:error, :invalid_format}`.

  Functions given something that is not a valid `%HLC{}` (timestamp and
  counter must be non-negative integers below 2^64 and 2^32) raise
  `ArgumentError`.
  """

  alias Vsmcp.CRDT.Native

  @enforce_keys [:timestamp, :counter, :node_id]
  defstruct [:timestamp, :counter, :node_id]

  @type t :: %__MODULE__{
          timestamp: non_neg_integer(),
          counter: non_neg_integer(),
          node_id: term()
        }

  @max_u64 0xFFFF_FFFF_FFFF_FFFF
  @max_u32 0xFFFF_FFFF

  defguardp valid?(c)
            when is_struct(c, __MODULE__) and is_integer(c.timestamp) and c.timestamp >= 0 and
                   c.timestamp <= @max_u64 and is_integer(c.counter) and c.counter >= 0 and
                   c.counter <= @max_u32

  @doc """
  A clock for `node_id` at the current physical time, counter 0.

      iex> clock = Vsmcp.CRDT.HLC.new(:node1)
      iex> {clock.counter, clock.node_id}
      {0, :node1}
  """
  @spec new(term()) :: t
  def new(node_id), do: %__MODULE__{timestamp: now_ms(), counter: 0, node_id: node_id}

  @doc """
  The clock of a local or send event: strictly greater than `clock`.

      iex> alias Vsmcp.CRDT.HLC
      iex> clock = HLC.new(:node1)
      iex> HLC.after?(HLC.tick(clock), clock)
      true
  """
  @spec tick(t) :: t
  def tick(clock) when valid?(clock) do
    case Native.hlc_tick(clock.timestamp, clock.counter, now_ms()) do
      {:error, reason} -> raise ArgumentError, "#{inspect(__MODULE__)}.tick/1: #{inspect(reason)}"
      {ts, c} -> %{clock | timestamp: ts, counter: c}
    end
  end

  def tick(other), do: invalid!(:tick, other)

  @doc """
  The clock after receiving a message stamped `remote`: greater than both,
  with `local`'s node id. Options: `max_offset:` ms a remote clock may run
  ahead of local physical time (default from
  `Application.get_env(:vsmcp_crdt, :hlc_max_offset_ms, 500)`).

      iex> alias Vsmcp.CRDT.HLC
      iex> local = HLC.new(:a)
      iex> remote = %HLC{timestamp: local.timestamp + 10, counter: 3, node_id: :b}
      iex> clock = HLC.receive_event(local, remote)
      iex> {HLC.after?(clock, remote), clock.node_id}
      {true, :a}
      iex> far = %HLC{remote | timestamp: local.timestamp + 3_600_000}
      iex> match?({:error, {:clock_skew, _}}, HLC.receive_event(local, far))
      true
  """
  @spec receive_event(t, t, keyword()) :: t | {:error, {:clock_skew, non_neg_integer()}}
  def receive_event(local, remote, opts \\ [])

  def receive_event(local, remote, opts) when valid?(local) and valid?(remote) do
    max_offset =
      Keyword.get_lazy(opts, :max_offset, fn ->
        Application.get_env(:vsmcp_crdt, :hlc_max_offset_ms, 500)
      end)

    unless is_integer(max_offset) and max_offset >= 0 and max_offset <= @max_u64 do
      raise ArgumentError,
            "#{inspect(__MODULE__)}.receive_event/3: max_offset must be a non-negative integer (ms), got: " <>
              inspect(max_offset)
    end

    case Native.hlc_receive(
           local.timestamp,
           local.counter,
           remote.timestamp,
           remote.counter,
           now_ms(),
           max_offset
         ) do
      {:ok, {ts, c}} ->
        %{local | timestamp: ts, counter: c}

      {:error, {:clock_skew, _ahead}} = error ->
        error

      {:error, reason} ->
        raise ArgumentError, "#{inspect(__MODULE__)}.receive_event/3: #{inspect(reason)}"
    end
  end

  def receive_event(local, remote, _opts),
    do: invalid!(:receive_event, if(valid?(local), do: remote, else: local))

  @doc """
  Total order: by timestamp, then counter, then the canonical bytes of the
  node id. `:eq` only for the same clock of the same node.

      iex> alias Vsmcp.CRDT.HLC
      iex> a = %HLC{timestamp: 100, counter: 0, node_id: :a}
      iex> HLC.compare(a, %HLC{a | counter: 1})
      :lt
      iex> HLC.compare(a, a)
      :eq
  """
  @spec compare(t, t) :: :lt | :eq | :gt
  def compare(a, b) when valid?(a) and valid?(b) do
    case Native.hlc_compare(a.timestamp, a.counter, a.node_id, b.timestamp, b.counter, b.node_id) do
      order when order in [:lt, :eq, :gt] ->
        order

      {:error, reason} ->
        raise ArgumentError, "#{inspect(__MODULE__)}.compare/2: #{inspect(reason)}"
    end
  end

  def compare(a, b), do: invalid!(:compare, if(valid?(a), do: b, else: a))

  @doc """
  Whether `a` orders before `b` (`compare(a, b) == :lt`).

      iex> alias Vsmcp.CRDT.HLC
      iex> HLC.before?(%HLC{timestamp: 1, counter: 0, node_id: :a}, %HLC{timestamp: 2, counter: 0, node_id: :a})
      true
  """
  @spec before?(t, t) :: boolean()
  def before?(a, b), do: compare(a, b) == :lt

  @doc """
  Whether `a` orders after `b` (`compare(a, b) == :gt`).

      iex> alias Vsmcp.CRDT.HLC
      iex> HLC.after?(%HLC{timestamp: 1, counter: 5, node_id: :a}, %HLC{timestamp: 1, counter: 4, node_id: :a})
      true
  """
  @spec after?(t, t) :: boolean()
  def after?(a, b), do: compare(a, b) == :gt

  @doc """
  Whether `a` and `b` carry the same timestamp and counter from different
  nodes: neither happened before the other, and only the node id tie-break
  orders them.

      iex> alias Vsmcp.CRDT.HLC
      iex> a = %HLC{timestamp: 100, counter: 2, node_id: :a}
      iex> HLC.concurrent?(a, %HLC{a | node_id: :b})
      true
      iex> HLC.concurrent?(a, HLC.tick(a))
      false
  """
  @spec concurrent?(t, t) :: boolean()
  def concurrent?(a, b) when valid?(a) and valid?(b),
    do: a.timestamp == b.timestamp and a.counter == b.counter and a.node_id !== b.node_id

  def concurrent?(a, b), do: invalid!(:concurrent?, if(valid?(a), do: b, else: a))

  @doc """
  The string form described in the moduledoc.

      iex> Vsmcp.CRDT.HLC.to_string(%Vsmcp.CRDT.HLC{timestamp: 1700000000000, counter: 3, node_id: :node1})
      "1700000000000:3@a:node1"
      iex> Vsmcp.CRDT.HLC.to_string(%Vsmcp.CRDT.HLC{timestamp: 5, counter: 0, node_id: "node one"})
      "5:0@s:node%20one"
  """
  @spec to_string(t) :: String.t()
  def to_string(clock) when valid?(clock),
    do: "#{clock.timestamp}:#{clock.counter}@" <> encode_node(clock.node_id)

  def to_string(other), do: invalid!(:to_string, other)

  defp encode_node(node) when is_atom(node), do: "a:" <> Atom.to_string(node)

  defp encode_node(node) when is_binary(node),
    do: "s:" <> URI.encode(node, &URI.char_unreserved?/1)

  defp encode_node(node) when is_integer(node), do: "i:" <> Integer.to_string(node)

  defp encode_node(node),
    do: "t:" <> Base.url_encode64(:erlang.term_to_binary(node), padding: false)

  @format ~r/\A(\d{1,20}):(\d{1,10})@([asit]):(.*)\z/s

  @doc """
  Parses the string form. Returns `{:ok, clock}` or `{:error, :invalid_format}`
  for anything that is not one (including an atom node id that does not
  exist in this VM). Never creates atoms.

      iex> Vsmcp.CRDT.HLC.from_string("1700000000000:3@a:node1")
      {:ok, %Vsmcp.CRDT.HLC{timestamp: 1700000000000, counter: 3, node_id: :node1}}
      iex> Vsmcp.CRDT.HLC.from_string("not a clock")
      {:error, :invalid_format}
  """
  @spec from_string(term()) :: {:ok, t} | {:error, :invalid_format}
  def from_string(string) when is_binary(string) do
    with [_, ts, c, tag, node] <- Regex.run(@format, string),
         {ts, ""} when ts <= @max_u64 <- Integer.parse(ts),
         {c, ""} when c <= @max_u32 <- Integer.parse(c),
         {:ok, node_id} <- decode_node(tag, node) do
      {:ok, %__MODULE__{timestamp: ts, counter: c, node_id: node_id}}
    else
      _ -> {:error, :invalid_format}
    end
  end

  def from_string(_other), do: {:error, :invalid_format}

  defp decode_node("a", name) do
    {:ok, String.to_existing_atom(name)}
  rescue
    ArgumentError -> :error
  end

  # URI.decode/1 passes malformed escapes through; accepting only the
  # canonical encoding rejects them and keeps one string per node id.
  defp decode_node("s", encoded) do
    string = URI.decode(encoded)
    if encode_node(string) == "s:" <> encoded, do: {:ok, string}, else: :error
  rescue
    ArgumentError -> :error
  end

  defp decode_node("i", digits) do
    case Integer.parse(digits) do
      {int, ""} -> {:ok, int}
      _ -> :error
    end
  end

  defp decode_node("t", encoded) do
    with {:ok, bin} <- Base.url_decode64(encoded, padding: false),
         {term, used} when used == byte_size(bin) <- :erlang.binary_to_term(bin, [:safe, :used]),
         false <- contains_fun?(term) do
      {:ok, term}
    else
      _ -> :error
    end
  rescue
    ArgumentError -> :error
  end

  defp contains_fun?(f) when is_function(f), do: true
  defp contains_fun?(t) when is_tuple(t), do: t |> Tuple.to_list() |> contains_fun?()

  defp contains_fun?(%{} = m),
    do: Enum.any?(m, fn {k, v} -> contains_fun?(k) or contains_fun?(v) end)

  defp contains_fun?([h | t]), do: contains_fun?(h) or contains_fun?(t)
  defp contains_fun?(_), do: false

  defp now_ms, do: System.os_time(:millisecond)

  defp invalid!(fun, term) do
    raise ArgumentError,
          "#{inspect(__MODULE__)}.#{fun}: expected a %#{inspect(__MODULE__)}{} with integer " <>
            "timestamp (0..2^64-1) and counter (0..2^32-1), got: #{inspect(term, limit: 8)}"
  end
end
