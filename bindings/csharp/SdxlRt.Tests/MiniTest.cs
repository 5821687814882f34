// A minimal test runner (no xunit/NUnit here): public static methods marked [Test] in this assembly, sync or
// returning Task, each with a timeout. Prints PASS/FAIL per test and, as its last line, "N passed, M failed".
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Reflection;
using System.Threading.Tasks;

namespace SdxlRt.Tests
{
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class TestAttribute : Attribute
    {
        public int TimeoutSeconds = 120;
    }

    public sealed class AssertionException : Exception
    {
        public AssertionException(string message) : base(message)
        {
        }
    }

    public static class Assert
    {
        public static void True(bool condition, string message)
        {
            if (!condition)
            {
                throw new AssertionException(message);
            }
        }

        public static void Equal<T>(T expected, T actual, string what)
        {
            if (!EqualityComparer<T>.Default.Equals(expected, actual))
            {
                throw new AssertionException(what + ": expected <" + expected + ">, got <" + actual + ">");
            }
        }

        /// <summary>Runs <paramref name="action"/> and returns the exception of type T it throws (unwrapping
        /// AggregateException from Task waits).</summary>
        public static T Throws<T>(Action action, string what) where T : Exception
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                Exception inner = MiniTest.Unwrap(e);
                T typed = inner as T;
                if (typed == null)
                {
                    throw new AssertionException(what + ": expected " + typeof(T).Name + ", got " + inner.GetType().Name + ": " + inner.Message);
                }
                return typed;
            }
            throw new AssertionException(what + ": expected " + typeof(T).Name + ", nothing was thrown");
        }
    }

    public static class MiniTest
    {
        public static Exception Unwrap(Exception e)
        {
            while (true)
            {
                var agg = e as AggregateException;
                if (agg != null && agg.InnerExceptions.Count == 1)
                {
                    e = agg.InnerException;
                    continue;
                }
                var tie = e as TargetInvocationException;
                if (tie != null && tie.InnerException != null)
                {
                    e = tie.InnerException;
                    continue;
                }
                return e;
            }
        }

        public static int Run(Assembly assembly, string filter)
        {
            var tests = new List<MethodInfo>();
            foreach (Type t in assembly.GetTypes())
            {
                foreach (MethodInfo m in t.GetMethods(BindingFlags.Public | BindingFlags.Static))
                {
                    if (m.GetCustomAttribute<TestAttribute>() != null && (filter == null || (t.Name + "." + m.Name).Contains(filter)))
                    {
                        tests.Add(m);
                    }
                }
            }
            tests.Sort((a, b) => string.CompareOrdinal(a.DeclaringType.Name + "." + a.Name, b.DeclaringType.Name + "." + b.Name));
            int passed = 0, failed = 0;
            foreach (MethodInfo m in tests)
            {
                string name = m.DeclaringType.Name + "." + m.Name;
                int timeout = m.GetCustomAttribute<TestAttribute>().TimeoutSeconds;
                var sw = Stopwatch.StartNew();
                try
                {
                    Task run = Task.Run(() =>
                    {
                        object r = m.Invoke(null, null);
                        var task = r as Task;
                        if (task != null)
                        {
                            task.GetAwaiter().GetResult();
                        }
                    });
                    if (!run.Wait(TimeSpan.FromSeconds(timeout)))
                    {
                        throw new TimeoutException("timed out after " + timeout + " s");
                    }
                    passed++;
                    Console.WriteLine("PASS {0} ({1} ms)", name, sw.ElapsedMilliseconds);
                }
                catch (Exception e)
                {
                    failed++;
                    Exception inner = Unwrap(e);
                    Console.WriteLine("FAIL {0} ({1} ms): {2}: {3}", name, sw.ElapsedMilliseconds, inner.GetType().Name, inner.Message);
                    if (!(inner is AssertionException))
                    {
                        Console.WriteLine(inner.StackTrace);
                    }
                }
            }
            Console.Out.Flush();
            Console.WriteLine("{0} passed, {1} failed", passed, failed);
            return failed == 0 && passed > 0 ? 0 : 1;
        }
    }
}
