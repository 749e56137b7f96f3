defmodule Vsmcp.CRDT.Sync.ChaosTest do
  # A short chaos campaign on :peer nodes (issue 16): a few seeds of
  # Vsmcp.Test.Chaos, each 3 to 5 nodes under kills, partitions, a lossy
  # transport, clock skew, a full disk, a node leaving and a restored
  # backup. The long campaign: `MIX_ENV=test mix run bench/chaos.exs`.
  use ExUnit.Case, async: false

  alias Vsmcp.Test.Chaos

  @moduletag :cluster
  @moduletag timeout: 300_000

  # Set CHAOS_SEEDS=1,2,3 to replay seeds.
  @seeds (case System.get_env("CHAOS_SEEDS") do
            nil -> [1, 2, 3]
            list -> list |> String.split(",", trim: true) |> Enum.map(&String.to_integer/1)
          end)

  for seed <- @seeds do
    @tag :tmp_dir
    test "chaos seed #{seed}: every live node converges on what was acknowledged", %{
      tmp_dir: tmp_dir
    } do
      report = Chaos.run(unquote(seed), tmp_dir: tmp_dir, steps: 12)
      assert report.failures == [], Chaos.format(report)
      assert report.ops > 0
    end
  end
end
