defmodule Vsmcp.CRDT.ReadmeTest do
  @moduledoc """
  The README's usage example runs as written: its first Elixir block under
  "## Usage", in a new BEAM (it starts the default store, whose name is
  global) whose working directory is a fresh temporary directory (the
  default store keeps its data in `data/` there).
  """
  use ExUnit.Case, async: true

  import Vsmcp.CRDT.TestHelpers

  @readme Path.expand("../../../README.md", __DIR__)
  @external_resource @readme

  test "the usage example starts the supervisor and counts to 5" do
    [_, usage] = String.split(File.read!(@readme), "\n## Usage\n", parts: 2)
    [_, example | _] = String.split(usage, ~r/^```elixir\n|^```\n/m)

    assert example =~ "Vsmcp.CRDT.Supervisor"
    assert example =~ "ContextStore.increment"

    script = """
    {:ok, _} = Application.ensure_all_started(:vsmcp_crdt)
    {:ok, _} = Application.ensure_all_started(:phoenix_pubsub)
    #{example}
    IO.puts("README example done")
    """

    dir = tmp_dir!("vsmcp_crdt_readme")
    {elixir, args} = elixir_command(script)
    {output, status} = System.cmd(elixir, args, cd: dir, stderr_to_stdout: true)

    assert status == 0, "the README example failed:\n#{output}"
    assert output =~ "README example done"
    assert File.dir?(Path.join(dir, "data"))
  end
end
