defmodule Vsmcp.CRDT.ContextStore.Options do
  @moduledoc """
  The options of `Vsmcp.CRDT.ContextStore.start_link/1`, checked and turned
  into the configuration map `Vsmcp.CRDT.Native.store_open/1` takes.

  Everything is checked before anything is opened or created, and every
  problem is a value, `{:error, {:invalid_option, key, value}}`: nothing
  reaches the NIF that its decoder would refuse with a `badarg` raise, and
  nothing reaches `Process.send_after/3` that it would refuse. So each
  integer option has an upper bound as well as a lower one:

  | option (in `:storage_opts`) | accepted | NIF type | why the upper bound |
  |---|---|---|---|
  | `:memory_limit` | `0..2^48` (0 acts as 1) | `usize` | a sane count of items, far below `usize` |
  | `:ets_limit` | `0..2^48` | `usize` | as above |
  | `:max_value_bytes` | `0..2^48` | `usize` | 256 TiB, more than any term |
  | `:cache_bytes` | `0..2^48` | `usize` | 256 TiB of block cache |
  | `:access_threshold` | `0..2^32-1` | `u32` | the NIF's type; 0 acts as 1 (as the replaced store accepted it) |
  | `:flush_interval` | `0..2^32-1` ms (0 acts as 1) | `u64` | about 49.7 days |
  | `:max_clock_offset` | `0..2^32-1` ms | `u64` | about 49.7 days |
  | `:decay_interval` | `0..2^32-1` ms, or `nil` (the default, 60 s); 0 disables decay | (Elixir timer) | `Process.send_after/3`'s limit |

  An integer option given as `nil` is refused (except `:decay_interval`);
  left out, the store uses its default. `:durability` may be given at the top
  level or in `:storage_opts` (the top level wins). The location options
  (`:data_dir`, `:dets_file`) are resolved last, by
  `Vsmcp.CRDT.Storage.Location.resolve/1`, which creates the directory; so
  a call refused for any other option leaves nothing on disk.

  Cost: pure Elixir, O(number of options), once per `start_link/1`.
  Invariant: a configuration map this module returns is one the NIF's
  decoder accepts, so a bad option can only ever be an `{:error, _}`
  value, never a raise inside the store.
  """

  alias Vsmcp.CRDT.Storage.Location

  @default_decay_interval 60_000

  @max_size 2 ** 48
  @max_u32 2 ** 32 - 1
  @max_ms 2 ** 32 - 1

  # The integer options passed to the NIF, with their accepted ranges.
  @native_integers [
    memory_limit: 0..@max_size,
    ets_limit: 0..@max_size,
    access_threshold: 0..@max_u32,
    flush_interval: 0..@max_ms,
    max_value_bytes: 0..@max_size,
    max_clock_offset: 0..@max_ms,
    cache_bytes: 0..@max_size
  ]

  @type reason :: {:invalid_option, atom(), term()} | {:foreign_data_file, String.t()} | term()

  @typedoc "The map `Vsmcp.CRDT.Native.store_open/1` takes."
  @type native :: %{
          required(:path) => String.t(),
          required(:ephemeral) => boolean(),
          required(:node_id) => term(),
          required(:durability) => :relaxed | :strict,
          optional(:memory_limit) => non_neg_integer(),
          optional(:ets_limit) => non_neg_integer(),
          optional(:access_threshold) => non_neg_integer(),
          optional(:flush_interval) => non_neg_integer(),
          optional(:max_value_bytes) => non_neg_integer(),
          optional(:max_clock_offset) => non_neg_integer(),
          optional(:cache_bytes) => non_neg_integer(),
          optional(:dets_import) => String.t()
        }

  @doc """
  Check the options of `Vsmcp.CRDT.ContextStore.start_link/1` and resolve
  the store's location (creating its directory).

  The map holds `:path` and `:ephemeral` (from the location; and
  `:dets_import` when the location is a DETS file to import, see
  `Vsmcp.CRDT.Storage.DetsImport`), `:node_id`
  (default `node()`), `:durability` (default `:relaxed`) and each integer
  option of the table above that was given. `:decay_interval` is not in it:
  the GenServer runs the decay timer (see `decay_interval/1`).

  Errors: `{:invalid_option, key, value}` (`key` is `:options` when `opts`
  is not a keyword list), or what `Vsmcp.CRDT.Storage.Location.resolve/1`
  returns.

      iex> alias Vsmcp.CRDT.ContextStore.Options
      iex> dir = Path.join(System.tmp_dir!(), "doc_\#{System.system_time()}_\#{System.unique_integer([:positive])}")
      iex> opts = [node_id: :n1, storage_opts: [data_dir: dir, memory_limit: 500, decay_interval: 1_000]]
      iex> Options.to_native(opts)
      {:ok, %{path: dir, ephemeral: false, node_id: :n1, durability: :relaxed, memory_limit: 500}}
      iex> File.dir?(dir)
      true
      iex> Options.to_native(storage_opts: [data_dir: dir, memory_limit: -1])
      {:error, {:invalid_option, :memory_limit, -1}}
      iex> Options.to_native(durability: :eventually)
      {:error, {:invalid_option, :durability, :eventually}}
  """
  @spec to_native(keyword()) :: {:ok, native()} | {:error, reason()}
  def to_native(opts) do
    with :ok <- check_options(opts),
         storage = Keyword.get(opts, :storage_opts, []),
         :ok <- check_keyword(storage),
         {:ok, durability} <- durability(opts[:durability] || storage[:durability] || :relaxed),
         :ok <- check_decay_interval(storage[:decay_interval]),
         {:ok, integers} <- native_integers(storage),
         {:ok, loc} <- Location.resolve(storage) do
      {:ok,
       integers
       |> Map.merge(%{
         path: loc.path,
         ephemeral: loc.ephemeral,
         node_id: Keyword.get(opts, :node_id, node()),
         durability: durability
       })
       |> Map.merge(Map.take(loc, [:dets_import]))}
    end
  end

  @doc """
  Milliseconds between the store's demotion passes: `:decay_interval` of
  `:storage_opts`, or #{@default_decay_interval} when not given. 0 means no
  passes. `opts` are options `to_native/1` accepted.

      iex> alias Vsmcp.CRDT.ContextStore.Options
      iex> Options.decay_interval(storage_opts: [decay_interval: 5_000])
      5000
      iex> Options.decay_interval(storage_opts: [memory_limit: 100])
      60000
      iex> Options.decay_interval(storage_opts: [decay_interval: 0])
      0
  """
  @spec decay_interval(keyword()) :: non_neg_integer()
  def decay_interval(opts) do
    get_in(opts, [:storage_opts, :decay_interval]) || @default_decay_interval
  end

  @sync_integers [
    tick_interval: 1..@max_ms,
    heartbeat_interval: 1..@max_ms,
    down_after: 1..@max_ms,
    retransmit_interval: 1..@max_ms,
    collect_after: 0..@max_ms,
    member_expiry: 0..@max_ms,
    max_log_bytes: 0..@max_size
  ]

  @doc """
  The sync options of a store (`:sync_opts` of `start_link/1`), checked,
  with `:enabled` resolved: a store syncs when it has a `:topic` (or a
  `:name` and `enabled: true`, which derives the topic from the name) and
  is not given `enabled: false`.

  Keys: `:enabled`, `:topic` (a string), `:transport` (`:pubsub`, `:pg` or
  a module), `:pubsub` (the Phoenix.PubSub server, default `Vsmcp.PubSub`),
  `:transport_opts`, `:tick_interval` (ms, default 5),
  `:heartbeat_interval` (ms, default 1000), `:down_after` (ms, default
  5000), `:retransmit_interval` (ms, default 200), `:max_log_bytes`
  (default 64 MiB), `:collect_after` (ms between two runs of the
  collection of stable remove tokens and delete tombstones, default
  2000), `:member_expiry` (ms a member replica may stay unheard before it
  leaves the membership, default 86_400_000, 0: never; see the sync
  guide), `:wire_versions` (tests). Errors are
  `{:invalid_option, {:sync_opts, key}, value}`.

      iex> alias Vsmcp.CRDT.ContextStore.Options
      iex> {:ok, sync} = Options.sync_opts(sync_opts: [topic: "orders", heartbeat_interval: 500])
      iex> {sync[:enabled], sync[:topic], sync[:heartbeat_interval]}
      {true, "orders", 500}
      iex> {:ok, sync} = Options.sync_opts(name: :orders, sync_opts: [enabled: true])
      iex> {sync[:enabled], sync[:topic]}
      {true, "vsmcp_crdt::orders"}
      iex> {:ok, sync} = Options.sync_opts(sync_opts: [topic: "orders", enabled: false])
      iex> {sync[:enabled], sync[:topic]}
      {false, "orders"}
      iex> {:ok, sync} = Options.sync_opts(name: :orders)
      iex> {sync[:enabled], sync[:topic]}
      {false, nil}
      iex> Options.sync_opts(sync_opts: [tick_interval: 0])
      {:error, {:invalid_option, {:sync_opts, :tick_interval}, 0}}
  """
  @spec sync_opts(keyword()) :: {:ok, keyword()} | {:error, reason()}
  def sync_opts(opts) do
    sync = if Keyword.keyword?(opts), do: Keyword.get(opts, :sync_opts, []), else: []

    with :ok <- check_options(opts),
         true <- (is_list(sync) and Keyword.keyword?(sync)) || {:bad, :sync_opts, sync},
         :ok <- check_sync(sync) do
      topic =
        case {sync[:topic], sync[:enabled], opts[:name]} do
          {topic, _, _} when is_binary(topic) -> topic
          {nil, true, name} when name != nil -> default_topic(name)
          _ -> nil
        end

      enabled = sync[:enabled] != false and topic != nil
      {:ok, sync |> Keyword.put(:enabled, enabled) |> Keyword.put(:topic, topic)}
    else
      {:bad, key, value} -> {:error, {:invalid_option, {:sync_opts, key}, value}}
      {:error, _} = error -> error
    end
  end

  @doc """
  The sync topic derived from a store's name.

      iex> Vsmcp.CRDT.ContextStore.Options.default_topic(Vsmcp.CRDT.ContextStore)
      "vsmcp_crdt:Vsmcp.CRDT.ContextStore"
  """
  @spec default_topic(term()) :: String.t()
  def default_topic(name), do: "vsmcp_crdt:" <> inspect(name)

  defp check_sync(sync) do
    Enum.reduce_while(sync, :ok, fn {k, v}, :ok ->
      if valid_sync?(k, v), do: {:cont, :ok}, else: {:halt, {:bad, k, v}}
    end)
  end

  defp valid_sync?(:enabled, v), do: is_boolean(v)
  defp valid_sync?(:topic, v), do: is_binary(v) and byte_size(v) in 1..255
  defp valid_sync?(:transport, v), do: is_atom(v) and v != nil
  defp valid_sync?(:pubsub, v), do: is_atom(v) and v != nil
  defp valid_sync?(:transport_opts, v), do: is_list(v)

  defp valid_sync?(:wire_versions, v),
    do: is_list(v) and v != [] and Enum.all?(v, &(is_integer(&1) and &1 in 1..255))

  defp valid_sync?(k, v) do
    case Keyword.fetch(@sync_integers, k) do
      {:ok, range} -> is_integer(v) and v in range
      :error -> false
    end
  end

  # Checked before anything is opened: GenServer.start_link/3 would raise on
  # a bad name only after the store's directory was opened.
  defp check_options(opts) do
    cond do
      not (is_list(opts) and Keyword.keyword?(opts)) ->
        {:error, {:invalid_option, :options, opts}}

      not valid_name?(opts[:name]) ->
        {:error, {:invalid_option, :name, opts[:name]}}

      true ->
        :ok
    end
  end

  defp valid_name?(name) when is_atom(name), do: true
  defp valid_name?({:global, _}), do: true
  defp valid_name?({:via, mod, _}) when is_atom(mod), do: true
  defp valid_name?(_), do: false

  defp check_keyword(list) when is_list(list) do
    if Keyword.keyword?(list), do: :ok, else: {:error, {:invalid_option, :storage_opts, list}}
  end

  defp check_keyword(other), do: {:error, {:invalid_option, :storage_opts, other}}

  defp durability(d) when d in [:relaxed, :strict], do: {:ok, d}
  defp durability(d), do: {:error, {:invalid_option, :durability, d}}

  defp check_decay_interval(nil), do: :ok
  defp check_decay_interval(i) when is_integer(i) and i in 0..@max_ms, do: :ok
  defp check_decay_interval(i), do: {:error, {:invalid_option, :decay_interval, i}}

  # The integer options given, each within its range.
  defp native_integers(storage) do
    Enum.reduce_while(@native_integers, {:ok, %{}}, fn {key, range}, {:ok, acc} ->
      case Keyword.fetch(storage, key) do
        :error ->
          {:cont, {:ok, acc}}

        {:ok, value} when is_integer(value) ->
          if value in range,
            do: {:cont, {:ok, Map.put(acc, key, value)}},
            else: {:halt, {:error, {:invalid_option, key, value}}}

        {:ok, value} ->
          {:halt, {:error, {:invalid_option, key, value}}}
      end
    end)
  end
end
