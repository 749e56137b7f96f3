defmodule Vsmcp.CRDT.ContextStore.OptionsTest do
  @moduledoc """
  `Vsmcp.CRDT.ContextStore.Options`: every integer option outside what the
  NIF decodes (or what `Process.send_after/3` takes, for `:decay_interval`)
  is an `{:error, {:invalid_option, key, value}}` value, from `to_native/1`
  and from `ContextStore.start_link/1`: never a raise from the NIF, never a
  crash of the caller, nothing created on disk; and the store stays usable.
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  alias Vsmcp.CRDT.ContextStore
  alias Vsmcp.CRDT.ContextStore.Options

  # The largest accepted value of each integer option.
  @max %{
    memory_limit: 2 ** 48,
    ets_limit: 2 ** 48,
    cache_bytes: 2 ** 48,
    memory_budget: 2 ** 48,
    max_value_bytes: 2 ** 48,
    access_threshold: 2 ** 32 - 1,
    flush_interval: 2 ** 32 - 1,
    max_clock_offset: 2 ** 32 - 1,
    decay_interval: 2 ** 32 - 1
  }

  @integer_options Map.keys(@max)

  defp bad_values(key) do
    common = [
      2 ** 64,
      2 ** 64 - 1,
      2 ** 128,
      -(2 ** 64),
      -1,
      @max[key] + 1,
      1.0,
      1.5,
      :lots,
      "10"
    ]

    # nil means "the default" for :decay_interval only.
    if key == :decay_interval, do: common, else: [nil | common]
  end

  describe "to_native/1" do
    test "every integer option out of range or not an integer is {:invalid_option, key, value}" do
      dir = tmp_dir!("vsmcp_crdt_options")

      for key <- @integer_options, value <- bad_values(key) do
        opts = [storage_opts: [{:data_dir, Path.join(dir, "never")}, {key, value}]]

        assert Options.to_native(opts) == {:error, {:invalid_option, key, value}},
               "#{key}: #{inspect(value)}"
      end

      # Checked before the location is resolved: nothing was created.
      assert File.ls!(dir) == []
    end

    test "access_threshold 0 is accepted (the store treats it as 1)" do
      assert {:ok, %{access_threshold: 0}} =
               Options.to_native(storage_opts: [access_threshold: 0])
    end

    test "the bounds themselves and zero (where allowed) are accepted" do
      dir = tmp_dir!("vsmcp_crdt_options_max")
      storage = [data_dir: dir] ++ Map.to_list(@max)

      assert {:ok, config} = Options.to_native(node_id: :n, storage_opts: storage)

      assert config ==
               @max
               |> Map.delete(:decay_interval)
               |> Map.merge(%{path: dir, ephemeral: false, node_id: :n, durability: :relaxed})

      zeros = for key <- @integer_options, do: {key, 0}
      assert {:ok, %{memory_limit: 0}} = Options.to_native(storage_opts: [data_dir: dir] ++ zeros)
    end

    test "the result map: location, node_id, durability and the given integer options only" do
      dir = tmp_dir!("vsmcp_crdt_options_map")

      assert Options.to_native(storage_opts: [data_dir: dir]) ==
               {:ok, %{path: dir, ephemeral: false, node_id: node(), durability: :relaxed}}

      assert {:ok, %{durability: :strict, node_id: {:a, 1}, memory_limit: 5}} =
               Options.to_native(
                 node_id: {:a, 1},
                 durability: :strict,
                 storage_opts: [data_dir: dir, memory_limit: 5, decay_interval: 10]
               )

      assert {:ok, %{durability: :strict}} =
               Options.to_native(storage_opts: [data_dir: dir, durability: :strict])
    end

    test "options that are not a keyword list, a bad name, bad storage_opts, bad durability" do
      assert {:error, {:invalid_option, :options, :nope}} = Options.to_native(:nope)
      assert {:error, {:invalid_option, :options, [:x]}} = Options.to_native([:x])
      assert {:error, {:invalid_option, :name, "n"}} = Options.to_native(name: "n")

      assert {:error, {:invalid_option, :storage_opts, %{}}} =
               Options.to_native(storage_opts: %{})

      assert {:error, {:invalid_option, :durability, :x}} = Options.to_native(durability: :x)
    end
  end

  describe "unknown keys" do
    test "are refused in every group, naming the key and its value" do
      assert Options.to_native(memory_limit: 5) == {:error, {:invalid_option, :memory_limit, 5}}

      assert Options.to_native(storage_opts: [memory_limt: 5]) ==
               {:error, {:invalid_option, :memory_limt, 5}}

      assert Options.sync_opts(sync_opts: [topic: "t", hearbeat_interval: 5]) ==
               {:error, {:invalid_option, {:sync_opts, :hearbeat_interval}, 5}}

      dir = tmp_dir!("vsmcp_crdt_options_unknown")

      assert ContextStore.start_link(storage_opts: [data_dir: dir, decay_intervall: 10]) ==
               {:error, {:invalid_option, :decay_intervall, 10}}

      assert File.ls!(dir) == []
    end

    test "except the replaced store's :ets_name and :dets_name, accepted and ignored" do
      dir = tmp_dir!("vsmcp_crdt_options_compat")
      storage = [data_dir: dir, ets_name: :old_ets, dets_name: :old_dets, memory_limit: 7]

      assert Options.to_native(storage_opts: storage) ==
               {:ok,
                %{
                  path: dir,
                  ephemeral: false,
                  node_id: node(),
                  durability: :relaxed,
                  memory_limit: 7
                }}
    end

    test "every documented option is in a schema, and the docs list them" do
      {:docs_v1, _, _, _, %{"en" => moduledoc}, _, _} = Code.fetch_docs(Options)

      for key <-
            ~w(node_id name durability storage_opts sync_opts data_dir dets_file memory_limit
               ets_limit access_threshold decay_interval flush_interval max_value_bytes
               max_clock_offset memory_budget cache_bytes enabled topic transport pubsub transport_opts
               tick_interval heartbeat_interval down_after retransmit_interval collect_after
               max_log_bytes wire_versions)a do
        assert moduledoc =~ "`#{inspect(key)}`", "#{key} is not documented"
      end
    end
  end

  describe "secrets and odd shapes" do
    @secret "0123456789abcdef0123"

    test "errors never echo a secret, and improper lists get an error, not a raise" do
      for opts <- [
            [{:a, 1} | :x],
            [sync_opts: [{:peers, 1} | :x]],
            [storage_opts: [memory_limt: [1 | 2]]],
            [sync_opts: [topic: [{:secret, @secret} | :tail]]],
            [sync_opts: [secrets: @secret]],
            [secret: @secret],
            [:junk, sync_opts: [secret: @secret]],
            [sync_opts: [secret: fn -> raise "boom" end]],
            [sync_opts: [secret: fn -> fn -> @secret end end]]
          ] do
        assert {:error, {:invalid_option, _, _} = reason} = Options.validate(opts)
        refute inspect(reason, limit: :infinity) =~ @secret
      end

      assert Options.validate(sync_opts: [secret: fn -> @secret end]) == :ok
    end

    test "hide_secret/1 puts a function in place of a secret and leaves the rest" do
      opts = Options.hide_secret(name: :s, sync_opts: [topic: "t", secret: @secret])
      assert opts[:name] == :s and opts[:sync_opts][:topic] == "t"
      f = opts[:sync_opts][:secret]
      assert is_function(f, 0) and f.() == @secret
      assert Options.hide_secret(opts) == opts

      for odd <- [nil, [1 | 2], [sync_opts: :x], %{sync_opts: [secret: @secret]}],
          do: assert(Options.hide_secret(odd) == odd)
    end
  end

  describe "decay_interval/1" do
    test "the storage option, or the default of 60 s" do
      assert Options.decay_interval(storage_opts: [decay_interval: 5]) == 5
      assert Options.decay_interval(storage_opts: [decay_interval: 0]) == 0
      assert Options.decay_interval(storage_opts: []) == 60_000
      assert Options.decay_interval([]) == 60_000
    end
  end

  describe "ContextStore.start_link/1" do
    test "refuses every out-of-range integer option with a value, and the store stays usable" do
      dir = tmp_dir!("vsmcp_crdt_options_store")
      file = Path.join(dir, "store.dets")

      for key <- @integer_options,
          value <- bad_values(key),
          location <- [:data_dir, :dets_file] do
        path = if location == :data_dir, do: Path.join(dir, "data"), else: file
        opts = [storage_opts: [{location, path}, {key, value}]]

        assert ContextStore.start_link(opts) == {:error, {:invalid_option, key, value}},
               "#{location}, #{key}: #{inspect(value)}"
      end

      # Nothing was created, and the caller is alive.
      assert File.ls!(dir) == []

      store = start_store!(storage_opts: [data_dir: Path.join(dir, "data")])
      :ok = ContextStore.create(store, :c, :g_counter)
      assert {:ok, 3} = ContextStore.increment(store, :c, 3)
      assert :ok = ContextStore.sync(store)
    end

    test "a store with every integer option at its bound works, syncs and stops" do
      dir = tmp_dir!("vsmcp_crdt_options_bounds")
      opts = [storage_opts: [data_dir: dir] ++ Map.to_list(@max)]

      store = start_store!(opts)
      :ok = ContextStore.create(store, :c, :pn_counter)
      assert {:ok, -2} = ContextStore.decrement(store, :c, 2)
      assert :ok = ContextStore.sync(store)
      stop_and_wait(store)

      store = start_store!(opts)
      assert {:ok, -2} = ContextStore.get(store, :c)
    end
  end
end
