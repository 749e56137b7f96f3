defmodule Vsmcp.CRDT.ContextStore.Options do
  @moduledoc """
  The options of `Vsmcp.CRDT.ContextStore.start_link/1`, checked and turned
  into the configuration map the NIF's `store_open/1` takes.

  One `NimbleOptions` schema per group (the store, `:storage_opts`,
  `:sync_opts`) checks them and generates the tables below. Everything is
  checked before anything is opened or created, and every problem is a
  value, `{:error, {:invalid_option, key, value}}` (for a sync option,
  `{:invalid_option, {:sync_opts, key}, value}`): nothing reaches the NIF
  that its decoder would refuse with a `badarg` raise, and nothing reaches
  `Process.send_after/3` that it would refuse. So each integer option has
  an upper bound as well as a lower one (`2^48` for counts and sizes, far
  below `usize`; `2^32-1` for milliseconds and `:access_threshold`, the
  NIF's `u32`, about 49.7 days of ms and `Process.send_after/3`'s limit).

  **Unknown keys are refused** (`{:invalid_option, key, value}` naming the
  unknown key), so a misspelt option is an error instead of being
  silently ignored. The one exception is the compatibility allowlist of
  the replaced store's options, accepted and ignored:
  #{Enum.map_join([:ets_name, :dets_name], ", ", &"`#{inspect(&1)}`")} in `:storage_opts`.

  An integer option given as `nil` is refused (except `:decay_interval`);
  left out, the store uses its default. `:durability` may be given at the top
  level or in `:storage_opts` (the top level wins). The location options
  (`:data_dir`, `:dets_file`) are resolved last, by
  `Vsmcp.CRDT.Storage.Location.resolve/1`, which checks them and creates
  the directory; so a call refused for any other option leaves nothing on
  disk.

  ## Options of `start_link/1`

  #{NimbleOptions.docs(__MODULE__.Schemas.store())}

  ## `:storage_opts`

  #{NimbleOptions.docs(__MODULE__.Schemas.storage())}

  ## `:sync_opts`

  #{NimbleOptions.docs(__MODULE__.Schemas.sync())}

  Cost: pure Elixir, O(number of options), once per `start_link/1`.
  Invariant: a configuration map this module returns is one the NIF's
  decoder accepts, so a bad option can only ever be an `{:error, _}`
  value, never a raise inside the store.
  """

  alias Vsmcp.CRDT.ContextStore.Options.Schemas
  alias Vsmcp.CRDT.Storage.Location

  @secret_expected "expected a binary of 16 to 4096 bytes, or a list of 1 to 4 of them"

  @default_decay_interval 60_000

  # The integer options passed to the NIF.
  @native_integers [
    :memory_limit,
    :ets_limit,
    :access_threshold,
    :flush_interval,
    :max_value_bytes,
    :max_clock_offset,
    :memory_budget,
    :cache_bytes
  ]

  @type reason :: {:invalid_option, atom(), term()} | {:foreign_data_file, String.t()} | term()

  @typedoc "The map the NIF's `store_open/1` takes."
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
          optional(:memory_budget) => non_neg_integer(),
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
  the store process (`Vsmcp.CRDT.ContextStore.Server`) runs the decay
  timer (see `decay_interval/1`).

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
    with :ok <- validate(opts),
         storage = Keyword.get(opts, :storage_opts, []),
         {:ok, loc} <- Location.resolve(storage) do
      durability = opts[:durability] || storage[:durability] || :relaxed

      {:ok,
       storage
       |> Keyword.take(@native_integers)
       |> Map.new()
       |> Map.merge(%{
         path: loc.path,
         ephemeral: loc.ephemeral,
         node_id: Keyword.get(opts, :node_id, node()),
         durability: durability
       })
       |> Map.merge(Map.take(loc, [:dets_import]))
       |> put_safe_decode(opts)}
    end
  end

  # `sync_opts: [decode: :safe]` reaches the NIF as `safe_decode: true`.
  defp put_safe_decode(native, opts) do
    case Keyword.get(opts, :sync_opts, []) |> Keyword.get(:decode) do
      :safe -> Map.put(native, :safe_decode, true)
      _ -> native
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
  def decay_interval(opts) when is_list(opts) do
    opts |> Keyword.get(:storage_opts, []) |> storage_decay_interval()
  end

  # Checked options hold an integer (or nil); anything else is the default.
  defp storage_decay_interval(storage) when is_list(storage) do
    case Keyword.get(storage, :decay_interval) do
      ms when is_integer(ms) and ms >= 0 -> ms
      _ -> @default_decay_interval
    end
  end

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
    with :ok <- validate(opts) do
      sync = Keyword.get(opts, :sync_opts, [])

      topic =
        case {sync[:topic], sync[:enabled], opts[:name]} do
          {topic, _, _} when is_binary(topic) -> topic
          {nil, true, name} when name != nil -> default_topic(name)
          _ -> nil
        end

      enabled = sync[:enabled] != false and topic != nil

      sync =
        case Keyword.fetch(sync, :secret) do
          {:ok, secret} -> Keyword.put(sync, :secret, wrap_secrets(secret))
          :error -> sync
        end

      {:ok, sync |> Keyword.put(:enabled, enabled) |> Keyword.put(:topic, topic)}
    end
  end

  # Secrets are kept in a closure from here on: state dumps and crash
  # reports of the store and its sync process print a function, not them.
  defp wrap_secrets(f) when is_function(f, 0), do: fn -> List.wrap(f.()) end
  defp wrap_secrets(secrets), do: fn -> List.wrap(secrets) end

  @doc false
  # `opts` with a `sync_opts: [secret: s]` turned into a function returning
  # `s`, so the supervisors and processes that keep the options (a child
  # spec, a supervisor's arguments) never hold the secret itself.
  @spec hide_secret(term()) :: term()
  def hide_secret(opts) do
    with true <- is_list(opts) and Keyword.keyword?(opts),
         sync when is_list(sync) <- Keyword.get(opts, :sync_opts),
         true <- Keyword.keyword?(sync),
         {:ok, secret} when not is_function(secret) <- Keyword.fetch(sync, :secret) do
      Keyword.put(opts, :sync_opts, Keyword.put(sync, :secret, fn -> secret end))
    else
      _ -> opts
    end
  end

  @doc """
  The sync topic derived from a store's name.

      iex> Vsmcp.CRDT.ContextStore.Options.default_topic(Vsmcp.CRDT.ContextStore)
      "vsmcp_crdt:Vsmcp.CRDT.ContextStore"
  """
  @spec default_topic(term()) :: String.t()
  def default_topic(name), do: "vsmcp_crdt:" <> inspect(name)

  @doc """
  Check every option of `Vsmcp.CRDT.ContextStore.start_link/1` against
  the schemas (the location options only by type: `to_native/1` resolves
  them). `:ok` or the first problem as `{:error, {:invalid_option, key,
  value}}`.

      iex> alias Vsmcp.CRDT.ContextStore.Options
      iex> Options.validate(node_id: :n1, storage_opts: [memory_limit: 10])
      :ok
      iex> Options.validate(storage_opts: [memory_limt: 10])
      {:error, {:invalid_option, :memory_limt, 10}}
      iex> Options.validate(sync_opts: [topic: "t", heartbeat: 5])
      {:error, {:invalid_option, {:sync_opts, :heartbeat}, 5}}
      iex> Options.validate(storage_opts: [ets_name: :old_table, dets_name: :old_file])
      :ok
  """
  @spec validate(keyword()) :: :ok | {:error, reason()}
  def validate(opts) do
    cond do
      not (is_list(opts) and Keyword.keyword?(opts)) ->
        {:error, {:invalid_option, :options, scrub(opts, 4)}}

      # NimbleOptions raises on an improper list where a keyword list goes.
      group = Enum.find([:storage_opts, :sync_opts], &improper_list?(opts[&1])) ->
        {:error, {:invalid_option, group, scrub(opts[group], 4)}}

      true ->
        compatible = drop_allowlisted(opts)

        case NimbleOptions.validate(compatible, Schemas.store_with_groups()) do
          {:ok, _} -> :ok
          {:error, error} -> {:error, invalid_option(error, compatible)}
        end
    end
  end

  defp improper_list?([_ | rest]), do: not is_list(rest) or improper_list?(rest)
  defp improper_list?(_other), do: false

  # The replaced store's keys that are accepted and ignored.
  defp drop_allowlisted(opts) do
    case Keyword.fetch(opts, :storage_opts) do
      {:ok, storage} when is_list(storage) ->
        if Keyword.keyword?(storage),
          do: Keyword.put(opts, :storage_opts, Keyword.drop(storage, Schemas.compat_storage())),
          else: opts

      _ ->
        opts
    end
  end

  # A NimbleOptions error as this module's `{:invalid_option, key, value}`.
  defp invalid_option(%NimbleOptions.ValidationError{} = error, opts) do
    group = List.first(error.keys_path)

    {key, value} =
      case error.key do
        # Unknown keys: the first of them, with its value.
        [unknown | _] -> {unknown, value_at(opts, error.keys_path ++ [unknown])}
        key -> {key, error.value}
      end

    case group do
      :sync_opts -> {:invalid_option, {:sync_opts, key}, redact(key, value)}
      _ -> {:invalid_option, key, redact(key, value)}
    end
  end

  # A value under a key whose name says "secret" (`:secret`, a misspelt
  # `:secrets`, ...) is never echoed back in an error.
  defp redact(key, value) do
    if secret_key?(key), do: :redacted, else: scrub(value, 4)
  end

  defp secret_key?(key) when is_atom(key) or is_binary(key),
    do: String.contains?(String.downcase(to_string(key)), "secret")

  defp secret_key?(_), do: false

  # `term` with the values under secret-named keys replaced, `depth` deep
  # (improper lists too: this runs on whatever a caller passed).
  defp scrub(term, 0), do: term
  defp scrub([], _depth), do: []

  defp scrub([{k, v} | rest], depth) do
    v = if secret_key?(k), do: :redacted, else: scrub(v, depth - 1)
    [{k, v} | scrub(rest, depth)]
  end

  defp scrub([head | rest], depth), do: [scrub(head, depth - 1) | scrub(rest, depth)]
  defp scrub(term, _depth), do: term

  defp value_at(opts, path) do
    Enum.reduce(path, opts, fn key, acc -> if is_list(acc), do: Keyword.get(acc, key) end)
  end

  @doc false
  # Custom validators of the schemas (NimbleOptions `{:custom, ...}`).
  def validate_name(name) when is_atom(name), do: {:ok, name}
  def validate_name({:global, _} = name), do: {:ok, name}
  def validate_name({:via, mod, _} = name) when is_atom(mod), do: {:ok, name}
  def validate_name(name), do: {:error, "invalid name: #{inspect(name)}"}

  @doc false
  def validate_topic(topic) when is_binary(topic) and byte_size(topic) in 1..255, do: {:ok, topic}

  def validate_topic(topic),
    do: {:error, "expected a string of 1 to 255 bytes, got: #{inspect(topic)}"}

  @doc false
  def validate_module(mod) when is_atom(mod) and mod != nil, do: {:ok, mod}
  def validate_module(mod), do: {:error, "expected a module or name, got: #{inspect(mod)}"}

  @doc false
  def validate_secret(secret) when is_binary(secret), do: validate_secret([secret])

  # A function (`hide_secret/1`) returning a secret or a list of them,
  # called once here; it must not raise or return another function.
  def validate_secret(f) when is_function(f, 0) do
    secrets =
      try do
        f.()
      rescue
        _ -> :raised
      catch
        _, _ -> :raised
      end

    case not is_function(secrets) and validate_secret(secrets) do
      {:ok, _} -> {:ok, f}
      _ -> {:error, @secret_expected}
    end
  end

  def validate_secret(secrets) when is_list(secrets) and length(secrets) in 1..4 do
    if Enum.all?(secrets, &(is_binary(&1) and byte_size(&1) in 16..4096)),
      do: {:ok, secrets},
      else: {:error, @secret_expected}
  end

  def validate_secret(_), do: {:error, @secret_expected}

  @doc false
  def validate_versions([_ | _] = versions) do
    if Enum.all?(versions, &(is_integer(&1) and &1 in 1..255)),
      do: {:ok, versions},
      else: {:error, "expected wire versions in 1..255, got: #{inspect(versions)}"}
  end

  def validate_versions(other), do: {:error, "expected a non-empty list, got: #{inspect(other)}"}
end
